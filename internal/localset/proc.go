package localset

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// proc is one supervised child process (a cell server or the gateway). Like a Kubernetes pod
// with restartPolicy Always, it is started again after an unexpected exit, with a backoff that
// resets once it has run for a while; stop ends it for good.
type proc struct {
	name    string
	path    string
	args    []string
	logPath string
	log     *slog.Logger
	env     []string // added to localset's own environment

	mu       sync.Mutex
	cmd      *exec.Cmd
	done     chan struct{} // closed when the current process exits
	stopping bool
	restarts int
	started  time.Time
}

// goMaxProcsEnv is the GOMAXPROCS the local SET gives each Go process it starts, unless the
// caller set one: the cores divided among them, at least one. The servers and the gateway
// share this machine's cores with the databases, as they would not on Kubernetes (where each
// pod's Go runtime sizes itself to its CPU limit); each runtime's default of every core makes
// idle Ps spin and steal across processes. Measured on 2 cores, 8 servers and a gateway
// (docs/benchmarks.md): one P each gave 8–12% more paid opens/s, a quarter lower p99 open and
// 10% less cell-server CPU per paid open.
func goMaxProcsEnv(cpus, processes int, inherited string) []string {
	if inherited != "" || processes <= 0 {
		return nil
	}
	return []string{"GOMAXPROCS=" + strconv.Itoa(max(1, cpus/processes))}
}

// start launches the process; it returns once the process exists (not once it is ready).
func (p *proc) start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.startLocked()
}

func (p *proc) startLocked() error {
	logFile, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("start %s: open log: %w", p.name, err)
	}
	fmt.Fprintf(logFile, "--- localset: starting %s at %s\n", p.name, time.Now().UTC().Format(time.RFC3339))
	cmd := exec.Command(p.path, p.args...)
	if len(p.env) > 0 {
		cmd.Env = append(os.Environ(), p.env...)
	}
	cmd.Stdout, cmd.Stderr = logFile, logFile
	// Own process group: a terminal's ^C reaches only localset, which then stops the tiers in
	// order (gateway, servers, caches, databases). Pdeathsig drains the child if localset
	// itself dies without cleaning up.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return fmt.Errorf("start %s: %w", p.name, err)
	}
	done := make(chan struct{})
	p.cmd, p.done, p.started = cmd, done, time.Now()
	go func() {
		err := cmd.Wait()
		logFile.Close()
		close(done)
		p.exited(cmd, err)
	}()
	return nil
}

// exited restarts a process that ended without being asked to.
func (p *proc) exited(cmd *exec.Cmd, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stopping || p.cmd != cmd {
		return
	}
	ran := time.Since(p.started)
	if ran > 30*time.Second {
		p.restarts = 0
	}
	backoff := min(time.Second<<min(p.restarts, 5), 30*time.Second)
	p.restarts++
	p.log.Warn("process exited; restarting", "process", p.name, "err", err, "ran", ran.Round(time.Millisecond), "backoff", backoff, "log", p.logPath)
	time.AfterFunc(backoff, func() {
		p.mu.Lock()
		defer p.mu.Unlock()
		if p.stopping || p.cmd != cmd {
			return
		}
		if err := p.startLocked(); err != nil {
			p.log.Error("restart failed", "process", p.name, "err", err)
		}
	})
}

// current is the running process's exit channel (nil before the first start).
func (p *proc) current() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.done
}

// pid is the current process ID (0 if none).
func (p *proc) pid() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil || p.cmd.Process == nil {
		return 0
	}
	return p.cmd.Process.Pid
}

// signal sends sig to the current process without changing supervision: SIGKILL here is a
// crash, which the supervisor answers with a restart.
func (p *proc) signal(sig syscall.Signal) error {
	p.mu.Lock()
	cmd := p.cmd
	p.mu.Unlock()
	if cmd == nil {
		return fmt.Errorf("%s: not started", p.name)
	}
	if err := cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("signal %s: %w", p.name, err)
	}
	return nil
}

// stop ends supervision and the process: SIGTERM (the binaries drain on it), then SIGKILL
// after grace.
func (p *proc) stop(grace time.Duration) error {
	p.mu.Lock()
	p.stopping = true
	cmd, done := p.cmd, p.done
	p.mu.Unlock()
	if cmd == nil {
		return nil
	}
	select {
	case <-done:
		return nil
	default:
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("stop %s: %w", p.name, err)
	}
	select {
	case <-done:
		return nil
	case <-time.After(grace):
	}
	_ = cmd.Process.Kill()
	<-done
	return fmt.Errorf("stop %s: did not exit within %s of SIGTERM; killed (see %s)", p.name, grace, p.logPath)
}

// waitReady polls url until it answers 200, the process exits, or ctx ends.
func waitReady(ctx context.Context, p *proc, url string) error {
	client := &http.Client{Timeout: 2 * time.Second}
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	var last string
	for {
		resp, err := client.Get(url)
		if err == nil {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = fmt.Sprintf("%d %s", resp.StatusCode, body)
		} else {
			last = err.Error()
		}
		select {
		case <-p.current():
			return fmt.Errorf("%s exited before it was ready (last answer: %s)\n--- %s (tail) ---\n%s", p.name, last, p.logPath, tail(p.logPath, 2000))
		case <-ctx.Done():
			return fmt.Errorf("%s not ready at %s: %w (last answer: %s; log %s)", p.name, url, ctx.Err(), last, p.logPath)
		case <-tick.C:
		}
	}
}

func tail(path string, n int64) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return ""
	}
	off := max(st.Size()-n, 0)
	buf := make([]byte, st.Size()-off)
	if _, err := f.ReadAt(buf, off); err != nil && !errors.Is(err, io.EOF) {
		return ""
	}
	return string(buf)
}
