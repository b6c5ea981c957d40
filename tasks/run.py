"""`python -m tasks.run <module> <args...>`, the command of every DVC stage (`python -m tasks.run
tasks.text.char_lstm.steps train`) and of the flows' `dvc` commands (`python -m tasks.run dvc repro
...`): runs `python -m <module> <args...>` on the flow's step server when there is one
(tasks/step_server.py: TensorFlow and DVC already imported), else in this process, which then ends
without the interpreter's teardown (TensorFlow's takes seconds). Either way the output and the exit
code are the module's, except when a package it imports is not installed for this interpreter (a
`dvc` or `python` from outside the project's environment): then one line says so, as a step reports
bad input (tasks.steps), instead of a traceback.
"""

from __future__ import annotations

import os
import runpy
import sys
from collections.abc import Sequence

from tasks.step_server import missing_package, report_missing_package, run_on_server


def run(module: str, args: Sequence[str]) -> int:
    code = run_on_server(module, args)
    if code is not None:
        return code
    sys.argv = [module, *args]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as exit:
        if exit.code is None or isinstance(exit.code, int):
            return exit.code or 0
        print(exit.code, file=sys.stderr)
        return 1
    except ImportError as error:
        if package := missing_package(error, module):
            return report_missing_package(package)
        raise
    return 0


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    code = run(sys.argv[1], sys.argv[2:])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
