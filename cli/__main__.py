"""`python -m rdpo_zoo.cli` (and `accelerate launch -m rdpo_zoo.cli train …`): the `rdpo-zoo` command."""

from rdpo_zoo.cli import main

main()
