package routing

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultWatchInterval is how often a Watcher looks at its file when no interval is given.
const DefaultWatchInterval = time.Second

// forceReadEvery bounds how long a rewrite that keeps the file's size and mtime (coarse mtime
// granularity, or a copy that preserves it) can go unnoticed: every that many polls the file is
// read and hashed even when stat says nothing changed.
const forceReadEvery = 10

// Watcher keeps the latest good routing table of one file. It polls rather than using inotify
// because Kubernetes updates a mounted ConfigMap by swapping a symlinked directory, which inotify
// watches on the file miss, while a stat+hash poll sees every form of update. A file that fails
// to parse is logged and ignored: the last good table stays in force, because routing by a
// slightly old table is safe (new epochs take effect in the future) and routing by none is not.
type Watcher struct {
	path     string
	interval time.Duration
	log      *slog.Logger

	current atomic.Pointer[Table]
	epoch   atomic.Int64 // number of the newest loaded epoch, for metrics
	reloads atomic.Int64
	failing atomic.Bool
	// confirmed is when a poll last found the file readable and either unchanged or good
	// (UnixNano, real time): how fresh the table in force is known to be.
	confirmed atomic.Int64

	mu       sync.Mutex
	changed  chan struct{} // closed and replaced on every successful reload
	lastSize int64
	lastMod  time.Time
	lastHash [sha256.Size]byte // of the last content read, good or bad
	goodHash [sha256.Size]byte // of the content in force
	polls    int
	lostFile bool // the last poll could not stat or read the file
}

// NewWatcher loads path once and fails if that first load fails: a gateway or server without a
// routing table cannot do anything useful. interval ≤ 0 means DefaultWatchInterval.
func NewWatcher(path string, interval time.Duration, log *slog.Logger) (*Watcher, error) {
	if interval <= 0 {
		interval = DefaultWatchInterval
	}
	if log == nil {
		log = slog.Default()
	}
	w := &Watcher{path: path, interval: interval, log: log.With("routing_file", path), changed: make(chan struct{})}
	data, info, err := w.read()
	if err != nil {
		return nil, fmt.Errorf("watch routing table: %w", err)
	}
	t, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("watch routing table %s: %w", path, err)
	}
	w.lastSize, w.lastMod, w.lastHash = info.Size(), info.ModTime(), sha256.Sum256(data)
	w.goodHash = w.lastHash
	w.install(t)
	return w, nil
}

// Current is the table in force. It is never nil once NewWatcher returned, and callers must
// treat it as read-only: it is shared.
func (w *Watcher) Current() *Table { return w.current.Load() }

// LoadedEpoch is the number of the newest epoch of the table in force.
func (w *Watcher) LoadedEpoch() int64 { return w.epoch.Load() }

// Confirmed is when the file was last found readable and either unchanged or good. A file
// that vanished or holds a refused table stops advancing it.
func (w *Watcher) Confirmed() time.Time { return time.Unix(0, w.confirmed.Load()) }

// Reloads counts successful loads, the first included.
func (w *Watcher) Reloads() int64 { return w.reloads.Load() }

// Failing reports whether the file's current content was refused (the last good table is
// still in force).
func (w *Watcher) Failing() bool { return w.failing.Load() }

// Changed returns a channel closed at the next successful reload. Take a fresh one after it
// fires.
func (w *Watcher) Changed() <-chan struct{} {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.changed
}

// Run polls the file until ctx ends.
func (w *Watcher) Run(ctx context.Context) {
	tick := time.NewTicker(w.interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			w.Poll()
		}
	}
}

// Poll checks the file once and reloads it when its content changed. Run calls it; tests and
// callers that want an immediate look may too.
func (w *Watcher) Poll() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.polls++
	info, err := os.Stat(w.path)
	if err != nil {
		w.refuse(fmt.Errorf("stat: %w", err), false)
		return
	}
	// A file that comes back after vanishing is read even when its stat matches the last one.
	if !w.lostFile && info.Size() == w.lastSize && info.ModTime().Equal(w.lastMod) && w.polls%forceReadEvery != 0 {
		w.confirm()
		return
	}
	data, info, err := w.read()
	if err != nil {
		w.refuse(err, false)
		return
	}
	if w.lostFile {
		w.lostFile = false
		if hash := sha256.Sum256(data); hash == w.lastHash && hash == w.goodHash {
			// Back with the content in force: nothing to reload, but no longer failing.
			w.failing.Store(false)
		}
	}
	hash := sha256.Sum256(data)
	w.lastSize, w.lastMod = info.Size(), info.ModTime()
	if bytes.Equal(hash[:], w.lastHash[:]) {
		if hash == w.goodHash {
			w.confirm()
		}
		return
	}
	// Remember the hash even when the content is bad, so a broken file is reported once, not
	// at every poll.
	w.lastHash = hash
	t, err := Parse(data)
	if err != nil {
		w.refuse(err, true)
		return
	}
	if cur := w.current.Load(); cur != nil && t.Latest().Number < cur.Latest().Number {
		// The table in force came from Offer and the file has not caught up (a mounted
		// ConfigMap lags its object by a minute or more). Going back would drop an epoch the
		// operator already recorded; the file is readable, so the table is still confirmed.
		w.log.Info("routing file older than the table in force; keeping the newer table", "file_epoch", t.Latest().Number, "epoch", w.epoch.Load())
		w.confirm()
		return
	}
	w.goodHash = hash
	w.install(t)
	w.log.Info("routing table reloaded", "epoch", w.epoch.Load(), "epochs", len(t.Epochs), "masked_ranges", len(t.Masked))
}

// Offer installs data, an encoded table from another source than the file (the cell's control
// schema, or a cell server asked by a gateway), when its newest epoch is newer than the one in
// force. The file stays the authority for everything else: a table of the same epoch (masks,
// pruned epochs) comes only from the file, and the next file of at least this epoch replaces
// the offered one. It reports whether data was installed; a table that fails to parse is an
// error and changes nothing.
func (w *Watcher) Offer(data []byte, source string) (bool, error) {
	t, err := Parse(data)
	if err != nil {
		return false, fmt.Errorf("routing table from %s: %w", source, err)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if cur := w.current.Load(); cur != nil && t.Latest().Number <= cur.Latest().Number {
		return false, nil
	}
	w.install(t)
	w.log.Info("routing table loaded ahead of the file", "source", source, "epoch", w.epoch.Load(), "epochs", len(t.Epochs))
	return true, nil
}

func (w *Watcher) read() ([]byte, os.FileInfo, error) {
	f, err := os.Open(w.path)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return nil, nil, fmt.Errorf("stat %s: %w", w.path, err)
	}
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(f); err != nil {
		return nil, nil, fmt.Errorf("read %s: %w", w.path, err)
	}
	return buf.Bytes(), info, nil
}

// refuse records that the file could not be used. Parse failures are already deduplicated by
// content hash, so they are always logged; a missing or unreadable file is logged when it
// starts failing, not at every poll.
func (w *Watcher) refuse(err error, always bool) {
	if !always {
		w.lostFile = true
	}
	if !w.failing.Swap(true) || always {
		w.log.Error("routing table refused; keeping the last good table", "epoch", w.epoch.Load(), "err", err)
	}
}

// confirm records that the table in force is what the file says now.
func (w *Watcher) confirm() {
	if !w.failing.Load() {
		w.confirmed.Store(time.Now().UnixNano())
	}
}

// install makes t current; w.mu is held (or w is not shared yet).
func (w *Watcher) install(t *Table) {
	w.current.Store(t)
	if l := t.Latest(); l != nil {
		w.epoch.Store(l.Number)
	}
	w.reloads.Add(1)
	w.failing.Store(false)
	w.confirmed.Store(time.Now().UnixNano())
	close(w.changed)
	w.changed = make(chan struct{})
}
