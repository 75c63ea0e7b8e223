package testenv

import (
	"os"
	"os/exec"
	"path/filepath"
)

// GoTool is the go command that builds the project's binaries for the tests and the local
// SET: the one on PATH, else $GOROOT/bin/go, else /usr/local/go/bin/go (where the README puts
// Go). runtime.GOROOT is not asked: it is deprecated, and names the toolchain that built the
// caller, which need not be installed where the caller runs.
func GoTool() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	if root := os.Getenv("GOROOT"); root != "" {
		if p := filepath.Join(root, "bin", "go"); isExecutable(p) {
			return p
		}
	}
	return "/usr/local/go/bin/go"
}

func isExecutable(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0
}
