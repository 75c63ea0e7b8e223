package controllers

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	toolscache "k8s.io/client-go/tools/cache"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/healthz"

	rpv1 "github.com/redpacketset/redpacket/api/v1alpha1"
)

// CacheHealth makes /readyz tell the truth about the manager's informers. An informer whose
// list keeps failing (RBAC taken away, an object that cannot be decoded) retries for ever in
// the background while every controller built on it silently reconciles nothing; healthz.Ping
// would still answer 200. Install WatchErrorHandler as the cache's DefaultWatchErrorHandler
// and add Checker as a readiness check.
type CacheHealth struct {
	// Window is how long a list or watch failure keeps the manager unready (0: 90 s). A
	// failing reflector retries at least every 30 s, so a lasting failure never ages out.
	Window time.Duration
	// Now is the clock (nil: time.Now).
	Now func() time.Time

	mu     sync.Mutex
	failed map[string]cacheFailure // by the reflector's type description
}

type cacheFailure struct {
	at  time.Time
	err string
}

// NewCacheHealth is a CacheHealth with the default window.
func NewCacheHealth() *CacheHealth { return &CacheHealth{} }

func (h *CacheHealth) now() time.Time {
	if h.Now != nil {
		return h.Now()
	}
	return time.Now()
}

// WatchErrorHandler records a reflector's failure, then logs it as client-go does.
func (h *CacheHealth) WatchErrorHandler(ctx context.Context, r *toolscache.Reflector, err error) {
	if !benignWatchError(err) {
		h.record(r.TypeDescription(), err)
	}
	toolscache.DefaultWatchErrorHandler(ctx, r, err)
}

func (h *CacheHealth) record(what string, err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.failed == nil {
		h.failed = map[string]cacheFailure{}
	}
	h.failed[what] = cacheFailure{at: h.now(), err: err.Error()}
}

// benignWatchError is a watch that ended the ordinary way: closed by the server, or too old
// to resume (the reflector lists again).
func benignWatchError(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || apierrors.IsResourceExpired(err) || apierrors.IsGone(err)
}

// Failures lists the informers that failed within the window, with their last error.
func (h *CacheHealth) Failures() []string {
	window := h.Window
	if window <= 0 {
		window = 90 * time.Second
	}
	now := h.now()
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []string
	for what, f := range h.failed {
		if now.Sub(f.at) <= window {
			out = append(out, fmt.Sprintf("%s: %s", what, f.err))
		}
	}
	slices.Sort(out)
	return out
}

// Checker fails while an informer of the operator's own kinds has not synced, or while any
// informer failed to list or watch within the window.
func (h *CacheHealth) Checker(c cache.Cache) healthz.Checker {
	return func(req *http.Request) error {
		var problems []string
		for _, obj := range []client.Object{&rpv1.RedPacketSet{}, &rpv1.RedPacketCell{}} {
			inf, err := c.GetInformer(req.Context(), obj, cache.BlockUntilSynced(false))
			switch {
			case err != nil:
				problems = append(problems, fmt.Sprintf("%T informer: %v", obj, err))
			case !inf.HasSynced():
				problems = append(problems, fmt.Sprintf("%T informer has not listed its objects yet", obj))
			}
		}
		problems = append(problems, h.Failures()...)
		if len(problems) > 0 {
			return errors.New("cannot list or watch: " + strings.Join(problems, "; "))
		}
		return nil
	}
}
