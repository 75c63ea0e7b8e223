package testenv

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// MemcachedProcess is one private memcached on 127.0.0.1 (TCP only, no UDP). It keeps
// nothing on disk, so a restart starts empty, as a real memcached restart does.
type MemcachedProcess struct {
	// MemoryMB is the cache size (-m); default 64.
	MemoryMB int
	// MaxConnections is -c; default 4096 so concurrency tests never hit it.
	MaxConnections int
	// Logger receives start/stop events; default slog.Default().
	Logger *slog.Logger

	mu     sync.Mutex
	port   int
	cmd    *exec.Cmd
	exited chan struct{}
}

// Start launches memcached on port (0 picks a free one) and waits until it answers.
func (p *MemcachedProcess) Start(ctx context.Context, port int) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	// A process that crashed on its own is not running: a supervisor starts it again.
	if p.cmd != nil && p.exited != nil {
		select {
		case <-p.exited:
			p.cmd = nil
		default:
		}
	}
	if p.cmd != nil {
		return fmt.Errorf("start memcached: already running on port %d", p.port)
	}
	autoPort := port == 0
	for attempt := 0; ; attempt++ {
		var err error
		if autoPort {
			if port, err = FreePort(); err != nil {
				return err
			}
		}
		err = p.launch(ctx, port)
		if err == nil {
			return nil
		}
		if !autoPort || !errors.Is(err, errExitedEarly) || attempt >= 2 {
			return err
		}
	}
}

func (p *MemcachedProcess) launch(ctx context.Context, port int) error {
	bin, err := lookPath("memcached")
	if err != nil {
		return fmt.Errorf("start memcached: %w", err)
	}
	args := []string{
		"-l", "127.0.0.1",
		"-p", strconv.Itoa(port),
		"-U", "0",
		"-m", strconv.Itoa(orDefaultInt(p.MemoryMB, 64)),
		"-c", strconv.Itoa(orDefaultInt(p.MaxConnections, 4096)),
	}
	if os.Geteuid() == 0 {
		args = append(args, "-u", "root") // memcached refuses root without it
	}
	var out strings.Builder
	cmd := exec.Command(bin, args...)
	logw := &lockedWriter{w: &out}
	cmd.Stdout, cmd.Stderr = logw, logw
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start memcached: %w", err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	p.cmd, p.exited, p.port = cmd, exited, port
	if err := waitMemcached(ctx, p.addrLocked(), exited); err != nil {
		_ = cmd.Process.Kill()
		<-exited
		p.cmd = nil
		return fmt.Errorf("start memcached on 127.0.0.1:%d: %w\n%s", port, err, logw.String())
	}
	p.logger().Info("memcached started", "addr", p.addrLocked())
	return nil
}

// waitMemcached polls with the text protocol's "version" until it answers.
func waitMemcached(ctx context.Context, addr string, exited <-chan struct{}) error {
	ctx, cancel := context.WithTimeout(ctx, waitTimeout)
	defer cancel()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	var lastErr error
	for {
		if lastErr = pingMemcached(addr); lastErr == nil {
			return nil
		}
		select {
		case <-exited:
			return errExitedEarly
		case <-ctx.Done():
			return fmt.Errorf("not answering: %w (last error: %v)", ctx.Err(), lastErr)
		case <-tick.C:
		}
	}
}

func pingMemcached(addr string) error {
	conn, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(time.Second))
	if _, err := conn.Write([]byte("version\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return err
	}
	if !strings.HasPrefix(line, "VERSION") {
		return fmt.Errorf("unexpected answer %q", line)
	}
	return nil
}

// Stop ends memcached; a stopped process is a no-op. It uses SIGKILL: memcached holds
// nothing worth a graceful exit, which would take most of a second per test.
func (p *MemcachedProcess) Stop() error { return p.signal(syscall.SIGKILL) }

// Kill ends memcached with SIGKILL, as a crash would.
func (p *MemcachedProcess) Kill() error { return p.signal(syscall.SIGKILL) }

func (p *MemcachedProcess) signal(sig syscall.Signal) error {
	p.mu.Lock()
	cmd, exited := p.cmd, p.exited
	p.mu.Unlock()
	if cmd == nil {
		return nil
	}
	if err := cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("signal memcached %d: %w", cmd.Process.Pid, err)
	}
	select {
	case <-exited:
	case <-time.After(30 * time.Second):
		_ = cmd.Process.Kill()
		<-exited
	}
	p.mu.Lock()
	p.cmd = nil
	p.mu.Unlock()
	p.logger().Info("memcached stopped", "addr", p.Addr(), "signal", sig.String())
	return nil
}

// Exited is closed when the current process ends, by a stop or a crash (nil before Start).
func (p *MemcachedProcess) Exited() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.exited
}

// Restart stops memcached (if running) and starts it on the same port, empty.
func (p *MemcachedProcess) Restart(ctx context.Context) error {
	port := p.Port()
	if port == 0 {
		return errors.New("restart memcached: never started")
	}
	if err := p.Stop(); err != nil {
		return err
	}
	return p.Start(ctx, port)
}

// Running reports whether the process is up (as far as this handle knows).
func (p *MemcachedProcess) Running() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cmd != nil
}

// Port is the TCP port it listens on.
func (p *MemcachedProcess) Port() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.port
}

// Addr is host:port, as gomemcache.New expects.
func (p *MemcachedProcess) Addr() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.addrLocked()
}

func (p *MemcachedProcess) addrLocked() string { return "127.0.0.1:" + strconv.Itoa(p.port) }

func (p *MemcachedProcess) logger() *slog.Logger {
	if p.Logger != nil {
		return p.Logger
	}
	return slog.Default()
}

// lockedWriter collects memcached's output for error messages.
type lockedWriter struct {
	mu sync.Mutex
	w  *strings.Builder
}

func (l *lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.w.Len() > 64<<10 {
		return len(b), nil // keep only the start; memcached is quiet unless it fails
	}
	return l.w.Write(b)
}

func (l *lockedWriter) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.String()
}
