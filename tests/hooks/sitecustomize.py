"""A power cut for tests/test_runs.py, loaded only by the processes of a test that puts this folder on PYTHONPATH.

``NBFT_TEST_KILL_AFTER_CHECKPOINT=N``: right after the N-th checkpoint a trainer of this process saved (after every
callback's ``on_save``: nbft's clock record is on disk), SIGKILL the process that started this one (the ``nbft
run`` of a kernel) and this one, as a power cut would. nbft itself carries no test hook.
"""
import os

if os.environ.get("NBFT_TEST_KILL_AFTER_CHECKPOINT"):
    import signal

    import transformers.trainer_callback as tc

    _saves = [0]
    _on_save = tc.CallbackHandler.on_save

    def on_save(self, args, state, control):
        control = _on_save(self, args, state, control)
        _saves[0] += 1
        if _saves[0] >= int(os.environ["NBFT_TEST_KILL_AFTER_CHECKPOINT"]):
            os.kill(os.getppid(), signal.SIGKILL)
            os.kill(os.getpid(), signal.SIGKILL)
        return control

    tc.CallbackHandler.on_save = on_save

if os.environ.get("NBFT_TEST_DISK_FULL"):
    # A full disk for tests/test_runs.py: opening for writing any file whose path contains this text fails with
    # ENOSPC, as a write to a full file system does (Python-level writes: open, io.open, pathlib).
    import builtins
    import errno
    import io

    _open, _where = io.open, os.environ["NBFT_TEST_DISK_FULL"]

    def _full_open(file, mode="r", *args, **kwargs):
        if _where in str(file) and any(m in mode for m in "wax+"):
            raise OSError(errno.ENOSPC, "No space left on device", str(file))
        return _open(file, mode, *args, **kwargs)

    builtins.open = io.open = _full_open
