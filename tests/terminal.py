"""What a test's subprocess needs to behave as a command typed at a terminal."""

import signal


def foreground_ctrl_c() -> None:
    """``preexec_fn`` giving SIGINT its default disposition, as a terminal's foreground job has.

    A test run started in the background (``cmd &``) passes SIGINT on ignored, and Python keeps
    it ignored: Ctrl-C sent by a test would then never reach the command.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)
