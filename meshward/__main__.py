"""`python -m meshward`: the same CLI as the `meshward` script."""

from meshward.cli import main

main()
