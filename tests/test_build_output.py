"""The build stage's reading of make's output: whole lines as they come, and a Ctrl-C acted on at once."""

from __future__ import annotations

import signal
import subprocess
import threading
import time

import pytest

from ktailor.stages.build import output_lines


def test_lines_come_whole_however_the_child_writes_them():
    script = r"printf 'a'; sleep 0.3; printf 'b\nc\n'; sleep 0.3; printf 'd\n\ne'"
    child = subprocess.Popen(["sh", "-c", script], stdout=subprocess.PIPE)
    assert list(output_lines(child.stdout)) == ["ab\n", "c\n", "d\n", "\n", "e"]
    assert child.wait() == 0


def test_a_ctrl_c_that_another_thread_receives_stops_a_silent_make_within_a_second():
    """The kernel may hand SIGINT to any thread (tqdm's monitor is one); a read blocked on a silent make
    would not see it until make printed again."""
    # as in a terminal, even when the test run itself was started with SIGINT ignored (`cmd &`, nohup)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    child = subprocess.Popen(["sh", "-c", "echo first; exec sleep 30"], stdout=subprocess.PIPE)
    lines = []
    timer = threading.Timer(0.5, lambda: signal.pthread_kill(threading.get_ident(), signal.SIGINT))
    started = time.monotonic()
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            for line in output_lines(child.stdout):
                lines.append(line)
        assert time.monotonic() - started < 5
        assert lines == ["first\n"]
    finally:
        child.kill()
        child.wait()
        timer.join()
        signal.signal(signal.SIGINT, previous)
