"""Drives `kpipe sql`'s shell through a pseudo-terminal, as a person would.

Usage: sql_shell.py KPIPE [ARGS...] < steps
Steps are separated by lines of `---`. Each step's lines are typed one by one
(Enter after each); then the driver waits for the next `ksql> ` prompt. A step
line `!interrupt-after TEXT` instead waits until TEXT has appeared since the
step began and presses Ctrl-C. After the last step, Ctrl-D leaves the shell.
Prints everything the terminal showed, then `exit=N`.
"""
import fcntl, os, pty, select, struct, sys, termios, time

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
        sys.exit(f"timed out waiting for {token!r} ({how}); the terminal showed:\n{shown.decode(errors='replace')}")


wait_for(PROMPT, 0)
for step in sys.stdin.read().split("\n---\n"):
    start = len(shown)
    for line in step.strip("\n").split("\n"):
        if line.startswith("!interrupt-after "):
            wait_for(line.split(" ", 1)[1].encode(), start)
            os.write(fd, b"\x03")
        else:
            sent = len(shown)
            os.write(fd, line.encode() + b"\r")
            # The line editor redraws the prompt while a line is typed; the
            # statement is taken once the line ends.
            wait_for(b"\n", sent)
    entered = shown.index(b"\n", sent) if b"\n" in shown[sent:] else len(shown)
    wait_for(PROMPT, entered)
os.write(fd, b"\x04")
while read_for(0.2):
    pass
_, status = os.waitpid(pid, 0)
sys.stdout.write(shown.decode(errors="replace"))
print(f"\nexit={os.waitstatus_to_exitcode(status)}")
