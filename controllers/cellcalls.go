package controllers

import (
	"context"
	"database/sql"
	"fmt"
	"slices"
	"strings"
	"sync"

	"sigs.k8s.io/controller-runtime/pkg/client"

	rpv1 "github.com/redpacketset/redpacket/api/v1alpha1"
)

// maxParallelCellCalls bounds how many cells' databases one pass talks to at once.
const maxParallelCellCalls = 16

// eachCell runs fn against every cell's database at once, each under its own deadline, and
// returns why each failed cell failed, by cell name. In parallel, because
// a set's pass (announce, publish, reading who holds which epoch) must cost one deadline
// however many cells are unreachable: one after the other, eight cells whose databases do not
// answer held the set's status back by minutes.
func (c *cellDBs) eachCell(ctx context.Context, k8s client.Reader, cells []*rpv1.RedPacketCell,
	fn func(ctx context.Context, cell *rpv1.RedPacketCell, db *sql.DB) error) map[string]error {
	var (
		mu     sync.Mutex
		failed = map[string]error{}
		wg     sync.WaitGroup
		sem    = make(chan struct{}, maxParallelCellCalls)
	)
	for _, cell := range cells {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			cctx, cancel := c.bound(ctx)
			defer cancel()
			db, err := c.forCell(cctx, k8s, cell)
			if err == nil {
				err = fn(cctx, cell, db)
			}
			if err != nil {
				mu.Lock()
				failed[cell.Name] = err
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return failed
}

// describeFailures says which cells failed and why, as "name (error)" sorted by name.
func describeFailures(failed map[string]error) []string {
	out := make([]string, 0, len(failed))
	for name, err := range failed {
		out = append(out, fmt.Sprintf("%s (%v)", name, err))
	}
	slices.Sort(out)
	return out
}

// cellsByName lists the cells of m by name, so passes over them read and report in one order.
func cellsByName(m map[string]*rpv1.RedPacketCell) []*rpv1.RedPacketCell {
	out := make([]*rpv1.RedPacketCell, 0, len(m))
	for _, c := range m {
		out = append(out, c)
	}
	slices.SortFunc(out, func(a, b *rpv1.RedPacketCell) int { return strings.Compare(a.Name, b.Name) })
	return out
}
