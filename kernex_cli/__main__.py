"""``python -m kernex_cli``: the same as the ``kernex`` command."""

from kernex_cli.launch import main

main()
