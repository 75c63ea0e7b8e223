package store

import (
	"cmp"
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// In the festival mix most open batches are one open of one packet, and each paid for a
// transaction of its own: one COMMIT, one fsync and one wake-up of a MariaDB thread per open,
// which cost far more than the open's rows (docs/benchmarks.md). Batches of different packets
// that reach this store together therefore commit together: one-round-trip writes (of a
// remembered row, openhint.go) queue behind the transaction in flight, and when it ends its
// runner hands everything that queued meanwhile to the first waiter, which runs it as one
// transaction. Under no load nothing waits; under load the commits grow with the queue, as
// the per-packet queue's group commit does for a hot packet.
//
// Nothing about an open depends on another packet's: each job's statements are exactly the
// ones it would have run alone, so a combined transaction that commits wrote what the jobs
// would have written one by one. A combined transaction that fails (one job's row was stale,
// a user's repeat, a lock wait) is rolled back whole, and every job then runs alone, getting
// its own answer; a job that did commit in a transaction whose outcome was lost reruns into
// its own conditional UPDATE, which then finds the row moved, and the locked path answers
// its users as repeats with the same amounts.
//
// The packet rows are updated in ascending ID order, so two combined transactions (of two
// servers of one cell) never wait on each other in a cycle; the guess UPDATE's lock wait is
// capped (guessLockWait), so one packet another server is busy on cannot hold up the rest.

// guessBatchMax bounds the jobs in one combined transaction.
const guessBatchMax = 32

// guessLockWait caps how long a one-round-trip UPDATE waits for its packet's row lock, in
// seconds. Another transaction holding it means another server or path is working on the
// packet, so the remembered row is likely stale anyway; past the cap the batch runs the
// locked path, which waits as long as the server allows.
const guessLockWait = 1

// guessTxTimeout bounds one combined transaction; it serves several callers, so no one
// caller's deadline applies.
const guessTxTimeout = 10 * time.Second

// errRunAlone: the combined transaction the job was in failed and was rolled back; the job
// runs by itself.
var errRunAlone = errors.New("combined transaction failed; run alone")

type guessJob struct {
	id    int64
	stmts string
	args  []any
	err   error
	wake  chan struct{}
	// lead, when set on wake-up, is the next batch, for this job's goroutine to run.
	lead []*guessJob
}

type guessLane struct {
	mu      sync.Mutex
	busy    bool
	waiting []*guessJob
}

type guessMetrics struct {
	packets prometheus.Histogram
	splitUp prometheus.Counter
}

func (m guessMetrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.packets, m.splitUp}
}

func newGuessMetrics() guessMetrics {
	return guessMetrics{
		packets: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "redpacket_store_open_commit_packets",
			Help:    "Packets whose one-round-trip open batches committed in one transaction.",
			Buckets: []float64{1, 2, 3, 4, 6, 8, 12, 16, 24, 32},
		}),
		splitUp: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "redpacket_store_open_commit_split_total",
			Help: "Combined open transactions rolled back whole (a stale row, a repeat, a lock wait), their batches then run one by one.",
		}),
	}
}

// commitGuess runs one packet's one-round-trip writes (stmts, without START TRANSACTION or
// COMMIT), together with whatever other packets' writes are waiting. The error is the job's
// own, as if it had run alone.
func (s *Store) commitGuess(ctx context.Context, id int64, stmts string, args []any) error {
	j := &guessJob{id: id, stmts: stmts, args: args, wake: make(chan struct{}, 1)}
	l := &s.lane
	l.mu.Lock()
	if l.busy {
		l.waiting = append(l.waiting, j)
		l.mu.Unlock()
		<-j.wake
		if j.lead != nil {
			s.runLane(j.lead)
		}
	} else {
		l.busy = true
		l.mu.Unlock()
		s.runLane([]*guessJob{j})
	}
	if errors.Is(j.err, errRunAlone) {
		return s.execTx(ctx, stmts, args...)
	}
	return j.err
}

// runLane commits batch (batch[0] is the caller's own job), wakes the others with their
// results, and hands what queued meanwhile to its first job.
func (s *Store) runLane(batch []*guessJob) {
	s.commitBatch(batch)
	l := &s.lane
	l.mu.Lock()
	var next []*guessJob
	if n := len(l.waiting); n > guessBatchMax {
		next = slices.Clone(l.waiting[:guessBatchMax])
		l.waiting = slices.Delete(l.waiting, 0, guessBatchMax)
	} else if n > 0 {
		next, l.waiting = l.waiting, nil
	} else {
		l.busy = false
	}
	l.mu.Unlock()
	for _, j := range batch[1:] {
		j.wake <- struct{}{}
	}
	if len(next) > 0 {
		next[0].lead = next
		next[0].wake <- struct{}{}
	}
}

func (s *Store) commitBatch(batch []*guessJob) {
	s.guessM.packets.Observe(float64(len(batch)))
	ctx, cancel := context.WithTimeout(context.Background(), guessTxTimeout)
	defer cancel()
	if len(batch) == 1 {
		batch[0].err = s.execTx(ctx, batch[0].stmts, batch[0].args...)
		return
	}
	// Ascending packet IDs: the lock order every combined transaction shares.
	sorted := slices.Clone(batch)
	slices.SortFunc(sorted, func(a, b *guessJob) int { return cmp.Compare(a.id, b.id) })
	var b strings.Builder
	var args []any
	for i, j := range sorted {
		if i > 0 {
			b.WriteString(";\n")
		}
		b.WriteString(j.stmts)
		args = append(args, j.args...)
	}
	err := s.execTx(ctx, b.String(), args...)
	if err != nil {
		s.guessM.splitUp.Inc()
		err = errRunAlone
	}
	for _, j := range batch {
		j.err = err
	}
}
