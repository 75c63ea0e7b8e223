// Package queue owns the per-packet FIFO in front of the money path: every request for one
// packet goes to the one worker its ID hashes to, and that worker executes its requests in
// arrival order. When several opens for the same packet are waiting, the worker runs them in
// ONE transaction (group commit): one row lock, one commit and one fsync pay for the whole
// batch, which is how a hot packet outruns naive row locking by an order of magnitude.
// The batch adapts to the load: a worker takes whatever is queued, up to BatchMax, so a
// lone open commits alone and a burst commits together.
//
// Queues are bounded. A request that finds its worker's queue full takes the guarded path:
// the guard (memcached in-flight counter per packet) admits it to a direct transaction of its
// own, or it is refused with ErrOverloaded (HTTP 429 + Retry-After).
//
// The queue must never be what makes an open correct: the store's transaction (row lock +
// unique keys) is. Losing the queue (a crash, a direct path racing it) costs speed only.
package queue

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/redpacketset/redpacket/cellserver/store"
)

// Opener runs opens; *packet.Service satisfies it.
type Opener interface {
	ValidateOpen(id int64, user string) error
	OpenBatch(ctx context.Context, id int64, users []string) ([]store.OpenOutcome, error)
}

// Guard limits concurrent DB transactions per packet on the path that bypasses the queue;
// *guard.Guard satisfies it. Acquire fails when the packet is over its limit.
type Guard interface {
	Acquire(ctx context.Context, packetID int64) (release func(), err error)
}

// ErrOverloaded: the packet's queue is full and the guard refused a direct transaction.
// Callers answer 429 with RetryAfter.
var ErrOverloaded = errors.New("packet overloaded, retry later")

// ErrClosed: the queue is shutting down and takes no new requests (503).
var ErrClosed = errors.New("queue closed")

// Config sizes the queue; zero fields take the defaults.
type Config struct {
	Workers    int           // default 32; also bounds the DB connections the queue uses
	Depth      int           // requests waiting per worker before overflow; default 1024
	BatchMax   int           // most opens per transaction; default 128
	Guard      Guard         // nil: overflow is refused at once
	RetryAfter time.Duration // advice on 429; default 1s
	// TxTimeout bounds one worker transaction; callers' deadlines do not apply to a batch
	// that serves many callers. Default 10s.
	TxTimeout  time.Duration
	Registerer prometheus.Registerer
}

// Queue is the set of workers. Safe for concurrent use.
type Queue struct {
	open    Opener
	cfg     Config
	workers []*worker
	wg      sync.WaitGroup

	mu     sync.RWMutex // held for reading while sending, for writing while closing
	closed bool

	batchSize *prometheus.HistogramVec
	overflow  prometheus.Counter
	rejected  prometheus.Counter
}

type request struct {
	ctx  context.Context
	id   int64
	user string                          // an open when fn is nil
	fn   func(ctx context.Context) error // any other per-packet request
	done chan result
}

type result struct {
	out store.OpenOutcome
	err error
}

type worker struct{ ch chan *request }

// New starts the workers.
func New(o Opener, cfg Config) (*Queue, error) {
	if cfg.Workers <= 0 {
		cfg.Workers = 32
	}
	if cfg.Depth <= 0 {
		cfg.Depth = 1024
	}
	if cfg.BatchMax <= 0 {
		cfg.BatchMax = 128
	}
	if cfg.RetryAfter <= 0 {
		cfg.RetryAfter = time.Second
	}
	if cfg.TxTimeout <= 0 {
		cfg.TxTimeout = 10 * time.Second
	}
	q := &Queue{open: o, cfg: cfg,
		batchSize: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "redpacket_queue_batch_size",
			Help:    "Opens committed per transaction by a queue worker (group commit).",
			Buckets: []float64{1, 2, 4, 8, 16, 32, 64, 128, 256},
		}, []string{"path"}),
		overflow: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "redpacket_queue_overflow_total",
			Help: "Requests that found their worker's queue full and took the guarded path.",
		}),
		rejected: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "redpacket_queue_rejected_total",
			Help: "Overflowing requests refused with 429 (the guard refused a direct transaction, or there is no guard).",
		}),
	}
	q.workers = make([]*worker, cfg.Workers)
	for i := range q.workers {
		q.workers[i] = &worker{ch: make(chan *request, cfg.Depth)}
	}
	if cfg.Registerer != nil {
		depth := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "redpacket_queue_depth",
			Help: "Requests waiting in the per-packet FIFO queues.",
		}, func() float64 { return float64(q.Depth()) })
		for _, c := range []prometheus.Collector{q.batchSize, q.overflow, q.rejected, depth} {
			if err := cfg.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("queue: register metrics: %w", err)
			}
		}
	}
	for _, w := range q.workers {
		q.wg.Add(1)
		go q.run(w)
	}
	return q, nil
}

// RetryAfter is the advice given with ErrOverloaded.
func (q *Queue) RetryAfter() time.Duration { return q.cfg.RetryAfter }

// Depth is the number of requests waiting.
func (q *Queue) Depth() int {
	n := 0
	for _, w := range q.workers {
		n += len(w.ch)
	}
	return n
}

func (q *Queue) workerOf(id int64) *worker {
	// splitmix64 finaliser: IDs differ mostly in high bits and the slot, so mix before mod.
	x := uint64(id)
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return q.workers[x%uint64(len(q.workers))]
}

// enqueue hands r to its worker; false when the worker's queue is full.
func (q *Queue) enqueue(r *request) (bool, error) {
	q.mu.RLock()
	defer q.mu.RUnlock()
	if q.closed {
		return false, ErrClosed
	}
	select {
	case q.workerOf(r.id).ch <- r:
		return true, nil
	default:
		return false, nil
	}
}

// Open opens packet id for user in FIFO order with the packet's other requests.
func (q *Queue) Open(ctx context.Context, id int64, user string) (store.OpenOutcome, error) {
	if err := q.open.ValidateOpen(id, user); err != nil {
		return store.OpenOutcome{}, err
	}
	r := &request{ctx: ctx, id: id, user: user, done: make(chan result, 1)}
	queued, err := q.enqueue(r)
	if err != nil {
		return store.OpenOutcome{}, err
	}
	if !queued {
		return q.guarded(ctx, id, user)
	}
	select {
	case res := <-r.done:
		return res.out, res.err
	case <-ctx.Done():
		// The worker may still commit this open; a retry then returns the same amount.
		return store.OpenOutcome{}, ctx.Err()
	}
}

// Do runs fn in FIFO order with the packet's other requests (pay goes through here).
func (q *Queue) Do(ctx context.Context, id int64, fn func(ctx context.Context) error) error {
	r := &request{ctx: ctx, id: id, fn: fn, done: make(chan result, 1)}
	queued, err := q.enqueue(r)
	if err != nil {
		return err
	}
	if !queued {
		release, err := q.acquire(ctx, id)
		if err != nil {
			return err
		}
		defer release()
		return fn(ctx)
	}
	select {
	case res := <-r.done:
		return res.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (q *Queue) acquire(ctx context.Context, id int64) (func(), error) {
	q.overflow.Inc()
	if q.cfg.Guard == nil {
		q.rejected.Inc()
		return nil, ErrOverloaded
	}
	release, err := q.cfg.Guard.Acquire(ctx, id)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		q.rejected.Inc()
		return nil, fmt.Errorf("%w: %v", ErrOverloaded, err)
	}
	return release, nil
}

// guarded is the overflow path: a direct single-open transaction under the guard.
func (q *Queue) guarded(ctx context.Context, id int64, user string) (store.OpenOutcome, error) {
	release, err := q.acquire(ctx, id)
	if err != nil {
		return store.OpenOutcome{}, err
	}
	defer release()
	out, err := q.open.OpenBatch(ctx, id, []string{user})
	if err != nil {
		return store.OpenOutcome{}, err
	}
	q.batchSize.WithLabelValues("guarded").Observe(1)
	return out[0], out[0].Err
}

// Close stops taking requests, lets the workers finish everything queued, and waits for
// them until ctx ends.
func (q *Queue) Close(ctx context.Context) error {
	q.mu.Lock()
	if !q.closed {
		q.closed = true
		for _, w := range q.workers {
			close(w.ch)
		}
	}
	q.mu.Unlock()
	done := make(chan struct{})
	go func() { q.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("drain queue: %w", ctx.Err())
	}
}

func (q *Queue) run(w *worker) {
	defer q.wg.Done()
	batch := make([]*request, 0, q.cfg.BatchMax)
	for first := range w.ch {
		batch = append(batch[:0], first)
	drain:
		for len(batch) < q.cfg.BatchMax {
			select {
			case r, ok := <-w.ch:
				if !ok {
					break drain
				}
				batch = append(batch, r)
			default:
				break drain
			}
		}
		q.process(batch)
		clear(batch)
	}
}

// process runs one drained batch: per packet in arrival order, consecutive opens as one
// transaction (or one each without group commit), other requests one at a time between them.
func (q *Queue) process(batch []*request) {
	var order []int64
	byPacket := make(map[int64][]*request, 4)
	for _, r := range batch {
		if r.ctx.Err() != nil {
			r.done <- result{err: r.ctx.Err()}
			continue
		}
		if _, ok := byPacket[r.id]; !ok {
			order = append(order, r.id)
		}
		byPacket[r.id] = append(byPacket[r.id], r)
	}
	for _, id := range order {
		reqs := byPacket[id]
		for len(reqs) > 0 {
			if reqs[0].fn != nil {
				ctx, cancel := context.WithTimeout(context.Background(), q.cfg.TxTimeout)
				reqs[0].done <- result{err: reqs[0].fn(ctx)}
				cancel()
				reqs = reqs[1:]
				continue
			}
			n := 1
			for n < len(reqs) && reqs[n].fn == nil {
				n++
			}
			q.openRun(id, reqs[:n])
			reqs = reqs[n:]
		}
	}
}

func (q *Queue) openRun(id int64, reqs []*request) {
	users := make([]string, len(reqs))
	for i, r := range reqs {
		users[i] = r.user
	}
	ctx, cancel := context.WithTimeout(context.Background(), q.cfg.TxTimeout)
	defer cancel()
	out, err := q.open.OpenBatch(ctx, id, users)
	q.batchSize.WithLabelValues("queue").Observe(float64(len(reqs)))
	for i, r := range reqs {
		if err != nil {
			r.done <- result{err: err}
			continue
		}
		r.done <- result{out: out[i], err: out[i].Err}
	}
}
