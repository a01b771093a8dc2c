"""Drives `kpipe sql`'s shell through a pseudo-terminal, as a person would.

Usage: sql_shell.py KPIPE [ARGS...] < steps
Steps are separated by lines of `---`. Each step's lines are typed one by one
(Enter after each); then the driver waits for the next `ksql> ` prompt. A step
line `!interrupt-after TEXT` instead waits until TEXT has appeared since the
step began and presses Ctrl-C. A step line `!repeat-until REGEX` types the
step's lines again (once the prompt is back) until what one attempt showed
matches REGEX, for a result that converges (a table a query is still filling).
After the last step, Ctrl-D leaves the shell. Prints everything the terminal
showed, then `exit=N`.
"""
import fcntl, os, pty, re, select, struct, sys, termios, time

PROMPT = b"ksql> "

pid, fd = pty.fork()
if pid == 0:
    os.execvp(sys.argv[1], sys.argv[1:])
# A wide terminal, so tables are not squeezed.
fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
shown = b""


def read_for(seconds):
    global shown
    deadline = time.time() + seconds
    while time.time() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                return False
            if not chunk:
                return False
            shown += chunk
    return True


def wait_for(token, since, seconds=60):
    deadline = time.time() + seconds
    while token not in shown[since:] and time.time() < deadline:
        if not read_for(0.1):
            break
    if token not in shown[since:]:
        ended = os.waitpid(pid, os.WNOHANG)
        how = f"kpipe ended: {os.waitstatus_to_exitcode(ended[1])}" if ended[0] else "kpipe still runs"
        fail(f"timed out waiting for {token!r} ({how})")


def type_lines(lines):
    """Types each line and waits for the prompt that follows the last."""
    began = len(shown)
    for line in lines:
        if line.startswith("!interrupt-after "):
            wait_for(line.split(" ", 1)[1].encode(), began)
            os.write(fd, b"\x03")
            continue
        sent = len(shown)
        os.write(fd, line.encode() + b"\r")
        # The line editor redraws the prompt while a line is typed; the
        # statement is taken once the line ends.
        wait_for(b"\n", sent)
        entered = shown.index(b"\n", sent)
    wait_for(PROMPT, entered)


def fail(why):
    sys.exit(f"{why}; the terminal showed:\n{shown.decode(errors='replace')}")


wait_for(PROMPT, 0)
for step in sys.stdin.read().split("\n---\n"):
    lines = step.strip("\n").split("\n")
    until = [l.split(" ", 1)[1] for l in lines if l.startswith("!repeat-until ")]
    lines = [l for l in lines if not l.startswith("!repeat-until ")]
    start = len(shown)
    type_lines(lines)
    deadline = time.time() + 60
    while until and not re.search(until[0].encode(), shown[start:]):
        if time.time() > deadline:
            fail(f"no attempt showed {until[0]!r}")
        start = len(shown)
        type_lines(lines)
os.write(fd, b"\x04")
while read_for(0.2):
    pass
_, status = os.waitpid(pid, 0)
sys.stdout.write(shown.decode(errors="replace"))
print(f"\nexit={os.waitstatus_to_exitcode(status)}")
