# The kernel build's progress (run through make-progress.sh): reads make's output (kbuild's quiet lines, "  CC      path.o"),
# copies every line to stdout (the build log) and, with -v tty=1, keeps one line moving on
# stderr, redrawn at most once a second and erased at the end:
#   compiling vmlinux: 1234/2161 objects (57%), about 4 min left
# -v total=N: the objects make will compile (0: unknown, the count alone); -v label=TEXT;
# -v settle=S: seconds of compiling before a time left is shown (10).
# POSIX awk (mawk, busybox): the time comes from srand(), which returns the previous seed.
function now() { srand(); return srand() }
function minutes(seconds) {
  if (seconds < 60) return "less than a minute"
  return "about " int((seconds + 30) / 60) " min"
}
function draw(   text, pct, rate, left) {
  if (total > 0 && done < total) {
    pct = int(100 * done / total)
    text = sprintf("%s: %d/%d objects (%d%%)", label, done, total, pct)
    # A rate from a few seconds of compiling at least: the first objects say little.
    if (done >= 20 && last - first >= settle) {
      rate = done / (last - first)
      left = (total - done) / rate
      text = text ", " minutes(left) " left"
    }
  } else if (total > 0) {  # the dry run's count reached: what is left is the link
    text = sprintf("%s: %d objects compiled, linking", label, done)
  } else {
    text = sprintf("%s: %d objects", label, done)
  }
  printf "  %s\033[K\r", text > "/dev/stderr"
  fflush("/dev/stderr")
  drawn = 1
}
BEGIN { if (label == "") label = "compiling"; if (settle == "") settle = 10; done = 0; drawn = 0; last = -1 }
{ print }
/^  CC / {
  if (done++ == 0) first = now()
  if (tty == 1) {
    t = now()
    if (t != last) { last = t; draw() }
  }
}
END { if (drawn) { printf "\033[K" > "/dev/stderr"; fflush("/dev/stderr") } }
