package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/redpacketset/redpacket/cellserver/routing"
)

// Cursor is a position in a user's history (the wire's history cursor).
type Cursor = routing.HistoryCursor

// historyPage is a cell's (and the gateway's) answer to a history query.
type historyPage struct {
	Items []json.RawMessage `json:"items"`
	Next  string            `json:"next"`
}

type historyItem struct {
	raw json.RawMessage
	pos Cursor
}

// serveHistory fans a user's history query out to every cell that may hold some of it (every
// cell of every epoch in force or past: a draining cell still holds old packets) and merges the
// pages.
//
// Each cell answers at most limit items strictly before the cursor, newest first. The merged
// page is the limit newest of all of them, and its cursor is the last item it shows: anything a
// cell did not send is older than the last item that cell sent, which is either on the page or
// older than the page's last item. So paging with the merged cursor misses and repeats nothing.
func (g *Gateway) serveHistory(w http.ResponseWriter, r *http.Request, role string) {
	q, ok := g.historyQuery(w, r, role)
	if !ok {
		return
	}
	cells, ok := g.historyCells(w)
	if !ok {
		return
	}
	answers, errs := g.askCells(r, q, cells)
	var items []historyItem
	more := false
	for i, cell := range cells {
		if errs[i] != nil {
			g.upstreamFailed(w, q.verb, cell, errs[i])
			return
		}
		a := answers[i]
		if a.status != http.StatusOK {
			// A refusal (bad user, say) is the same from every cell: pass the first one on.
			a.write(w, cell)
			return
		}
		page, err := decodeHistory(a.body)
		if err != nil {
			g.log.Warn("cell sent an unreadable history page", "cell", cell, "err", err)
			writeError(w, http.StatusBadGateway, routing.CodeUpstreamInvalid, "", fmt.Sprintf("cell %s sent an unreadable history page", cell))
			return
		}
		items = append(items, page.items...)
		more = more || page.next != ""
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(mergeHistory(items, more, q.limit))
}

// historyQuery is one history request as every cell is asked it.
type historyQuery struct {
	uri     string // the cells' path and query
	limit   int
	userKey int64 // rendezvous key: one user's history meets one server per cell
	verb    string
}

// historyQuery reads and checks the request, answering 400 itself when it is wrong.
func (g *Gateway) historyQuery(w http.ResponseWriter, r *http.Request, role string) (historyQuery, bool) {
	user := r.PathValue("user")
	if user == "" {
		writeError(w, http.StatusBadRequest, routing.CodeInvalidInput, "user", "user must not be empty")
		return historyQuery{}, false
	}
	q := r.URL.Query()
	limit := g.cfg.HistoryLimit
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > g.cfg.MaxHistoryLimit {
			writeError(w, http.StatusBadRequest, routing.CodeInvalidInput, "limit", fmt.Sprintf("limit must be an integer in 1..%d", g.cfg.MaxHistoryLimit))
			return historyQuery{}, false
		}
		limit = n
	}
	before := q.Get("before")
	if before != "" {
		if _, err := routing.ParseHistoryCursor(before); err != nil {
			writeError(w, http.StatusBadRequest, routing.CodeInvalidInput, "before", err.Error())
			return historyQuery{}, false
		}
	}
	query := url.Values{"limit": {strconv.Itoa(limit)}}
	if before != "" {
		query.Set("before", before)
	}
	return historyQuery{
		uri:     "/v1/users/" + url.PathEscape(user) + "/" + role + "?" + query.Encode(),
		limit:   limit,
		userKey: hashString(user),
		verb:    "history_" + role,
	}, true
}

// historyCells lists every cell of the table in force, answering 503 itself when there is no
// table or a cell has no ready server.
func (g *Gateway) historyCells(w http.ResponseWriter) ([]string, bool) {
	t := g.cfg.Routing.Current()
	if t == nil {
		writeError(w, http.StatusServiceUnavailable, routing.CodeNotReady, "", "no routing table loaded")
		return nil, false
	}
	// Every cell that may hold a record: those of every epoch in force by now, and by a
	// hand-over margin from now, because a cell server whose clock runs ahead of this
	// gateway's may already create under the next epoch (docs/designdoc/rebalancing.md). A cell
	// only a later epoch names holds nothing yet and is often not serving yet.
	cells := t.CellsBy(g.cfg.Now().Add(routing.HandoverMargin))
	// A missing cell would silently drop part of the history, and the cursor would then skip
	// it for good; refusing the whole query is the honest answer.
	for _, cell := range cells {
		if len(g.ready.Ready(cell)) == 0 {
			writeError(w, http.StatusServiceUnavailable, routing.CodeCellUnavailable, "", fmt.Sprintf("cell %s has no ready server; history incomplete", cell))
			return nil, false
		}
	}
	return cells, true
}

// askCells sends q to every cell at once, within the upstream timeout.
func (g *Gateway) askCells(r *http.Request, q historyQuery, cells []string) ([]*upstream, []error) {
	ctx, cancel := context.WithTimeout(r.Context(), g.cfg.UpstreamTimeout)
	defer cancel()
	answers := make([]*upstream, len(cells))
	errs := make([]error, len(cells))
	var wg sync.WaitGroup
	for i, cell := range cells {
		wg.Add(1)
		go func() {
			defer wg.Done()
			answers[i], errs[i] = g.callCell(ctx, q.verb, cell, q.userKey, http.MethodGet, q.uri, r.Header, nil, nil)
		}()
	}
	wg.Wait()
	return answers, errs
}

// mergeHistory is the page of the limit newest items of all cells' pages; more says some cell
// has items beyond its page.
func mergeHistory(items []historyItem, more bool, limit int) historyPage {
	slices.SortFunc(items, func(a, b historyItem) int {
		switch {
		case a.pos.NewerThan(b.pos):
			return -1
		case b.pos.NewerThan(a.pos):
			return 1
		}
		return 0
	})
	out := historyPage{Items: make([]json.RawMessage, 0, min(limit, len(items)))}
	if len(items) > limit {
		items, more = items[:limit], true
	}
	for _, it := range items {
		out.Items = append(out.Items, it.raw)
	}
	if more && len(items) > 0 {
		out.Next = items[len(items)-1].pos.String()
	}
	return out
}

type decodedPage struct {
	items []historyItem
	next  string
}

// decodeHistory reads a cell's page, keeping each item's JSON as the cell wrote it and
// extracting only its position: "packetId" (a decimal string, or a number) and "at" (epoch
// milliseconds, or an RFC 3339 time) or "atMillis".
func decodeHistory(body []byte) (decodedPage, error) {
	var page historyPage
	if err := json.Unmarshal(body, &page); err != nil {
		return decodedPage{}, fmt.Errorf("decode history page: %w", err)
	}
	out := decodedPage{next: page.Next}
	for i, raw := range page.Items {
		var f struct {
			PacketID json.RawMessage `json:"packetId"`
			At       json.RawMessage `json:"at"`
			AtMillis json.RawMessage `json:"atMillis"`
		}
		if err := json.Unmarshal(raw, &f); err != nil {
			return decodedPage{}, fmt.Errorf("history item %d: %w", i, err)
		}
		id, err := jsonInt(f.PacketID)
		if err != nil {
			return decodedPage{}, fmt.Errorf("history item %d: packetId: %w", i, err)
		}
		atRaw := f.AtMillis
		if len(atRaw) == 0 {
			atRaw = f.At
		}
		at, err := jsonMillis(atRaw)
		if err != nil {
			return decodedPage{}, fmt.Errorf("history item %d: at: %w", i, err)
		}
		out.items = append(out.items, historyItem{raw: raw, pos: Cursor{AtMillis: at, PacketID: id}})
	}
	return out, nil
}

// jsonInt reads an integer sent as a JSON string (how packet IDs travel, since JavaScript
// loses int64 precision) or as a plain number.
func jsonInt(raw json.RawMessage) (int64, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 {
		return 0, errors.New("missing")
	}
	s := string(raw)
	if raw[0] == '"' {
		if err := json.Unmarshal(raw, &s); err != nil {
			return 0, err
		}
	}
	return strconv.ParseInt(s, 10, 64)
}

func jsonMillis(raw json.RawMessage) (int64, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 {
		return 0, errors.New("missing")
	}
	if raw[0] == '"' {
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return 0, err
		}
		if ts, err := time.Parse(time.RFC3339Nano, s); err == nil {
			return ts.UnixMilli(), nil
		}
		return strconv.ParseInt(s, 10, 64)
	}
	return strconv.ParseInt(string(raw), 10, 64)
}
