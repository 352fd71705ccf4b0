"""The ``kernex`` command line: one module per noun, thin over the library packages."""
