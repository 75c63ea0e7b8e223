package main

import (
	"os"
	"os/signal"
	"syscall"
	"unsafe"
)

// foreground makes localset's own process group the terminal's foreground group, when
// localset runs in the foreground of a terminal but shares its group with others: under
// `make up`, and `make up | tee up.log`, the terminal's ^C would otherwise reach make and tee
// as well. tee would die and take the log of the ordered stop with it, and make would answer
// the ^C by killing itself with SIGINT however cleanly localset stopped (exit 130, not 0).
// Alone in the foreground, localset is the only process a ^C reaches; tee keeps writing until
// localset closes its output, and make sees localset's own exit status.
//
// The returned restore hands the terminal back to the group localset came from, so make, or
// whatever ran localset, is in the foreground again when localset exits. Without a
// controlling terminal, or when localset leads its group already (a shell with job control
// started it directly), foreground changes nothing.
func foreground() (restore func()) {
	noop := func() {}
	tty, err := os.OpenFile("/dev/tty", os.O_RDWR, 0)
	if err != nil {
		return noop
	}
	fd := tty.Fd()
	pgrp := syscall.Getpgrp()
	fg, err := tcgetpgrp(fd)
	if err != nil || fg != pgrp || pgrp == os.Getpid() {
		tty.Close()
		return noop
	}
	// A background group that sets the foreground, or writes to a terminal with tostop set,
	// is stopped by SIGTTOU unless it ignores it; localset does both, the second after
	// restore while it prints its last line.
	signal.Ignore(syscall.SIGTTOU)
	if err := syscall.Setpgid(0, 0); err != nil {
		tty.Close()
		return noop
	}
	if err := tcsetpgrp(fd, os.Getpid()); err != nil {
		// Still in a group of its own, so a ^C would miss localset: go back.
		_ = syscall.Setpgid(0, pgrp)
		tty.Close()
		return noop
	}
	// ^Z would stop localset alone, and nothing would resume it: the shell waits for make,
	// not for localset's group, and the terminal would belong to a stopped group.
	signal.Ignore(syscall.SIGTSTP, syscall.SIGTTIN)
	return func() {
		_ = tcsetpgrp(fd, pgrp)
		tty.Close()
	}
}

func tcgetpgrp(fd uintptr) (int, error) {
	var pgrp int32
	if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, fd, syscall.TIOCGPGRP, uintptr(unsafe.Pointer(&pgrp))); e != 0 {
		return 0, e
	}
	return int(pgrp), nil
}

func tcsetpgrp(fd uintptr, pgrp int) error {
	p := int32(pgrp)
	if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, fd, syscall.TIOCSPGRP, uintptr(unsafe.Pointer(&p))); e != 0 {
		return e
	}
	return nil
}
