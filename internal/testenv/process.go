// Package testenv starts the real services the data plane talks to — MariaDB and memcached
// from Debian packages — as private processes under a directory of their own, listening on
// 127.0.0.1 with a free port. Tests use StartMariaDB, SharedMariaDB and StartMemcached; tools
// that run a local SET use MariaDBProcess and MemcachedProcess directly with a persistent dir.
//
// It must never touch the machine's default instances (no /etc/mysql, no /run/mysqld, no
// default port) and never skip a test: a missing binary fails it with a hint to run
// hack/install-deps.sh.
package testenv

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// installHint is appended to every "binary not found" error.
const installHint = "run hack/install-deps.sh (installs mariadb-server, mariadb-client and memcached)"

// lookPath finds a binary on PATH or in the sbin directories Debian puts daemons in, which
// are often missing from a non-root PATH.
func lookPath(names ...string) (string, error) {
	for _, name := range names {
		if p, err := exec.LookPath(name); err == nil {
			return p, nil
		}
		for _, dir := range []string{"/usr/sbin", "/usr/bin", "/sbin", "/usr/local/sbin", "/usr/local/bin"} {
			p := filepath.Join(dir, name)
			if st, err := os.Stat(p); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
				return p, nil
			}
		}
	}
	return "", fmt.Errorf("none of %s found: %s", strings.Join(names, ", "), installHint)
}

// FreePort asks the kernel for a free TCP port on 127.0.0.1. Another process may take it
// before the caller binds it, so launchers retry with a new port when a start fails early.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// tailFile returns the last n bytes of a log file, for error messages.
func tailFile(path string, n int64) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return ""
	}
	off := st.Size() - n
	if off < 0 {
		off = 0
	}
	buf := make([]byte, st.Size()-off)
	if _, err := f.ReadAt(buf, off); err != nil {
		return ""
	}
	return string(buf)
}

// errExitedEarly marks a daemon that died before accepting connections, which is worth a
// retry on a fresh port when the port was picked automatically.
var errExitedEarly = errors.New("exited before accepting connections")

// waitTimeout bounds the wait for a daemon's first connection.
const waitTimeout = 90 * time.Second
