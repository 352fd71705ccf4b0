"""``python -m kernex_agent enroll|run|status``: the same as the ``kernex-agent`` command."""

from kernex_agent.cli import run

if __name__ == "__main__":
    run()
