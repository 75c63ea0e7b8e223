package routing

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/redpacketset/redpacket/internal/testenv"
)

func writeTable(t *testing.T, path string, tab *Table) {
	t.Helper()
	data, err := tab.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	writeRaw(t, path, data)
}

// writeRaw replaces the file atomically, the way the kubelet swaps ConfigMap content.
func writeRaw(t *testing.T, path string, data []byte) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func TestWatcherReloadsAndKeepsLastGood(t *testing.T) {
	path := filepath.Join(t.TempDir(), "routing.json")
	tab := twoEpochs()
	tab.Epochs = tab.Epochs[:1]
	writeTable(t, path, tab)

	w, err := NewWatcher(path, 5*time.Millisecond, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	if w.LoadedEpoch() != 1 || w.Reloads() != 1 {
		t.Fatalf("initial load: epoch %d reloads %d", w.LoadedEpoch(), w.Reloads())
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go w.Run(ctx)

	// A new epoch is picked up without a restart.
	changed := w.Changed()
	writeTable(t, path, twoEpochs())
	testenv.Eventually(t, 5*time.Second, "a reload", testenv.Received(changed))
	if w.LoadedEpoch() != 2 {
		t.Fatalf("after reload epoch = %d", w.LoadedEpoch())
	}
	if c, _, _ := w.Current().OwnerAt(11, t1); c != "rp-cell-2" {
		t.Fatalf("reloaded table routes slot 11 to %q", c)
	}

	// A broken file and an invalid table are refused; the last good table stays.
	for _, bad := range [][]byte{[]byte("{not json"), []byte(`{"set":"rp","slotCount":12,"epochs":[]}`)} {
		writeRaw(t, path, bad)
		deadline := time.Now().Add(5 * time.Second)
		for !w.Failing() {
			if time.Now().After(deadline) {
				t.Fatal("watcher never noticed the bad file")
			}
			time.Sleep(time.Millisecond) // polling a condition with a deadline, not synchronising on time
		}
		if w.LoadedEpoch() != 2 || w.Current() == nil {
			t.Fatalf("bad file replaced the table: epoch %d", w.LoadedEpoch())
		}
		w.failing.Store(false) // so the next bad file is observed afresh
	}

	// A missing file is also survived.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	w.Poll()
	if !w.Failing() || w.Current() == nil {
		t.Fatal("missing file not reported or table dropped")
	}

	// Recovery: a good file again is loaded.
	changed = w.Changed()
	next := twoEpochs()
	next.Masked = nil
	writeTable(t, path, next)
	testenv.Eventually(t, 5*time.Second, "a reload", testenv.Received(changed))
	if w.Failing() || w.Current().IsMasked(2) {
		t.Fatal("recovered file not in force")
	}
}

func TestWatcherSameSizeRewrite(t *testing.T) {
	path := filepath.Join(t.TempDir(), "routing.json")
	tab := twoEpochs()
	writeTable(t, path, tab)
	info, _ := os.Stat(path)
	w, err := NewWatcher(path, time.Hour, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	// Same length, same mtime, different owner: only the periodic forced read sees it.
	tab.Epochs[1].Ranges[0].Cell = "rp-cell-9"
	data, _ := tab.Marshal()
	tab.Epochs[1].Ranges[0].Cell = "rp-cell-0"
	orig, _ := tab.Marshal()
	if len(data) != len(orig) {
		t.Fatal("test needs equal sizes")
	}
	writeRaw(t, path, data)
	if err := os.Chtimes(path, info.ModTime(), info.ModTime()); err != nil {
		t.Fatal(err)
	}
	for range forceReadEvery {
		w.Poll()
	}
	if c, _, _ := w.Current().OwnerAt(0, t1); c != "rp-cell-9" {
		t.Fatalf("same-size rewrite not noticed: owner %q", c)
	}
}

func TestNewWatcherFailsWithoutAGoodFile(t *testing.T) {
	dir := t.TempDir()
	if _, err := NewWatcher(filepath.Join(dir, "absent.json"), 0, nil); err == nil {
		t.Error("NewWatcher accepted a missing file")
	}
	bad := filepath.Join(dir, "bad.json")
	writeRaw(t, bad, []byte(`{"slotCount":0}`))
	if _, err := NewWatcher(bad, 0, nil); err == nil {
		t.Error("NewWatcher accepted an invalid table")
	}
}

func TestWatcherFileComesBackUnchanged(t *testing.T) {
	path := filepath.Join(t.TempDir(), "routing.json")
	writeTable(t, path, twoEpochs())
	info, _ := os.Stat(path)
	w, err := NewWatcher(path, time.Hour, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(path)
	os.Remove(path)
	w.Poll()
	if !w.Failing() {
		t.Fatal("missing file not noticed")
	}
	// Restored byte for byte with the same mtime (a backup copy): no longer failing.
	writeRaw(t, path, data)
	if err := os.Chtimes(path, info.ModTime(), info.ModTime()); err != nil {
		t.Fatal(err)
	}
	w.Poll()
	if w.Failing() || w.Reloads() != 1 {
		t.Fatalf("restored file: failing=%v reloads=%d", w.Failing(), w.Reloads())
	}
}

func TestWatcherBadFileComesBackBad(t *testing.T) {
	path := filepath.Join(t.TempDir(), "routing.json")
	writeTable(t, path, twoEpochs())
	w, err := NewWatcher(path, time.Hour, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	writeRaw(t, path, []byte("{bad"))
	w.Poll()
	info, _ := os.Stat(path)
	os.Remove(path)
	w.Poll()
	writeRaw(t, path, []byte("{bad"))
	if err := os.Chtimes(path, info.ModTime(), info.ModTime()); err != nil {
		t.Fatal(err)
	}
	w.Poll()
	if !w.Failing() {
		t.Fatal("the same bad content came back and the watcher stopped reporting it")
	}
}

// TestWatcherOfferRunsAheadOfTheFile: a newer table offered from the cell's database is in
// force at once; the lagging file does not take it back; the file's own copy of that epoch
// (with a mask added) replaces the offered one; an older or equal offer changes nothing.
func TestWatcherOfferRunsAheadOfTheFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "routing.json")
	one := twoEpochs()
	one.Epochs = one.Epochs[:1]
	writeTable(t, path, one)
	w, err := NewWatcher(path, time.Hour, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	two, err := twoEpochs().Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := w.Offer(two, "test"); !ok || err != nil || w.LoadedEpoch() != 2 {
		t.Fatalf("offer of epoch 2: %v %v, epoch %d", ok, err, w.LoadedEpoch())
	}
	// The kubelet may deliver an intermediate version: epoch 1 with a mask added.
	oneMasked := twoEpochs()
	oneMasked.Epochs = oneMasked.Epochs[:1]
	oneMasked.Masked = []MaskedRange{{Start: 7, End: 7, Reason: "test", Since: t1}}
	writeTable(t, path, oneMasked)
	for i := 0; i < 2*forceReadEvery; i++ {
		w.Poll()
	}
	if w.LoadedEpoch() != 2 || w.Failing() {
		t.Fatalf("the epoch-1 file took the table back: epoch %d failing %v", w.LoadedEpoch(), w.Failing())
	}
	if ok, err := w.Offer(two, "test"); ok || err != nil {
		t.Fatalf("a second offer of epoch 2 installed: %v %v", ok, err)
	}
	if ok, err := w.Offer([]byte("{"), "test"); ok || err == nil {
		t.Fatalf("a broken offer: %v %v", ok, err)
	}
	masked := twoEpochs()
	masked.Masked = []MaskedRange{{Start: 3, End: 4, Reason: "test", Since: t1}}
	writeTable(t, path, masked)
	w.Poll()
	if !w.Current().IsMasked(3) || w.LoadedEpoch() != 2 {
		t.Fatalf("the file's copy of epoch 2 with a mask was not installed: epoch %d", w.LoadedEpoch())
	}
}
