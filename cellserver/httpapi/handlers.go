package httpapi

import (
	"context"
	"net/http"
	"strconv"
	"time"

	"github.com/redpacketset/redpacket/cellserver/ids"
	"github.com/redpacketset/redpacket/cellserver/packet"
	"github.com/redpacketset/redpacket/cellserver/routing"
)

// PacketJSON is a packet on the wire. Times are unix milliseconds (0 = not yet).
type PacketJSON struct {
	PacketID       string `json:"packetId"`
	Sender         string `json:"sender"`
	RequestID      string `json:"requestId"`
	Kind           string `json:"kind"`
	Status         string `json:"status"`
	Exhausted      bool   `json:"exhausted"`
	TotalCents     int64  `json:"totalCents"`
	Count          int    `json:"count"`
	RemainingCents int64  `json:"remainingCents"`
	RemainingCount int    `json:"remainingCount"`
	RefundedCents  int64  `json:"refundedCents"`
	Group          string `json:"group"`
	Greeting       string `json:"greeting"`
	CreatedAt      int64  `json:"createdAt"`
	PaidAt         int64  `json:"paidAt"`
	ExpiresAt      int64  `json:"expiresAt"`
	SettledAt      int64  `json:"settledAt"`
}

func unixMS(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixMilli()
}

func packetJSON(p packet.Packet) PacketJSON {
	return PacketJSON{
		PacketID: strconv.FormatInt(p.ID, 10), Sender: p.Sender, RequestID: p.RequestID, Kind: string(p.Kind),
		Status: p.Status.String(), Exhausted: p.Exhausted(), TotalCents: p.TotalCents, Count: p.Count,
		RemainingCents: p.RemainingCents, RemainingCount: p.RemainingCount, RefundedCents: p.RefundedCents,
		Group: p.Group, Greeting: p.Greeting, CreatedAt: unixMS(p.CreatedAt), PaidAt: unixMS(p.PaidAt),
		ExpiresAt: unixMS(p.ExpiresAt), SettledAt: unixMS(p.SettledAt),
	}
}

type wrapBody struct {
	Sender     string `json:"sender"`
	RequestID  string `json:"requestId"`
	TotalCents int64  `json:"totalCents"`
	Count      int    `json:"count"`
	Kind       string `json:"kind"`
	Group      string `json:"group"`
	Greeting   string `json:"greeting"`
}

// wrap: 201 with the new packet, 200 with the first one on a retried request ID.
func (a *API) wrap(w http.ResponseWriter, r *http.Request) error {
	var b wrapBody
	if err := decode(r, &b); err != nil {
		return err
	}
	slot := -1
	if v := r.Header.Get(routing.HeaderSlot); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 || n >= ids.MaxSlots {
			return &apiError{status: http.StatusBadRequest, code: routing.CodeInvalidInput, field: routing.HeaderSlot, msg: "slot must be 0..999"}
		}
		slot = n
	}
	p, created, err := a.cfg.Service.Wrap(r.Context(), packet.WrapRequest{Sender: b.Sender, RequestID: b.RequestID,
		TotalCents: b.TotalCents, Count: b.Count, Kind: packet.Kind(b.Kind), Group: b.Group, Greeting: b.Greeting}, slot)
	if err != nil {
		return err
	}
	status := http.StatusCreated
	if !created {
		status = http.StatusOK
	}
	writeJSON(w, status, packetJSON(p))
	return nil
}

type payBody struct {
	PaymentTxnID string `json:"paymentTxnId"`
	AmountCents  int64  `json:"amountCents"`
}

// pay runs in the packet's FIFO, so a payment and the first opens keep their order.
func (a *API) pay(w http.ResponseWriter, r *http.Request) error {
	id, err := pathID(r)
	if err != nil {
		return err
	}
	var b payBody
	if err := decode(r, &b); err != nil {
		return err
	}
	req := packet.PayRequest{PaymentTxnID: b.PaymentTxnID, AmountCents: b.AmountCents}
	if err := packet.ValidatePay(req, a.cfg.Service.Limits()); err != nil {
		return err
	}
	var p packet.Packet
	err = a.cfg.Queue.Do(r.Context(), id, func(ctx context.Context) error {
		var err error
		p, err = a.cfg.Service.Pay(ctx, id, req)
		return err
	})
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, packetJSON(p))
	return nil
}

type userBody struct {
	User string `json:"user"`
}

// packetAndUser reads what grab and open both take: the packet ID from the path and the user
// from the body, in that order, so a bad ID is reported before the body is read.
func packetAndUser(r *http.Request) (int64, userBody, error) {
	var b userBody
	id, err := pathID(r)
	if err != nil {
		return 0, b, err
	}
	if err := decode(r, &b); err != nil {
		return 0, b, err
	}
	return id, b, nil
}

type grabJSON struct {
	PacketID string `json:"packetId"`
	Eligible bool   `json:"eligible"`
	Reason   string `json:"reason,omitempty"`
}

func (a *API) grab(w http.ResponseWriter, r *http.Request) error {
	id, b, err := packetAndUser(r)
	if err != nil {
		return err
	}
	e, err := a.cfg.Service.Grab(r.Context(), id, b.User)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, grabJSON{PacketID: strconv.FormatInt(id, 10), Eligible: e.Eligible, Reason: e.Reason})
	return nil
}

type openJSON struct {
	PacketID    string `json:"packetId"`
	User        string `json:"user"`
	AmountCents int64  `json:"amountCents"`
	Repeat      bool   `json:"repeat"`
}

func (a *API) open(w http.ResponseWriter, r *http.Request) error {
	id, b, err := packetAndUser(r)
	if err != nil {
		return err
	}
	o, err := a.cfg.Queue.Open(r.Context(), id, b.User)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, openJSON{PacketID: strconv.FormatInt(id, 10), User: o.User, AmountCents: o.AmountCents, Repeat: o.Repeat})
	return nil
}

type receiverJSON struct {
	User        string `json:"user"`
	AmountCents int64  `json:"amountCents"`
	At          int64  `json:"at"`
	Seq         int    `json:"seq"`
}

type detailsJSON struct {
	Packet    PacketJSON     `json:"packet"`
	Receivers []receiverJSON `json:"receivers"`
	Next      string         `json:"next"`
}

// details: the packet and a page of receivers in open order; "next" is the after= cursor of
// the following page, "" at the end.
func (a *API) details(w http.ResponseWriter, r *http.Request) error {
	id, err := pathID(r)
	if err != nil {
		return err
	}
	limit, err := a.limit(r)
	if err != nil {
		return err
	}
	after := 0
	if v := r.URL.Query().Get("after"); v != "" {
		after, err = strconv.Atoi(v)
		if err != nil || after < 0 {
			return &apiError{status: http.StatusBadRequest, code: routing.CodeInvalidInput, field: "after", msg: "after must be a receiver seq from a previous page"}
		}
	}
	p, rs, err := a.cfg.Service.Details(r.Context(), id, after, limit)
	if err != nil {
		return err
	}
	out := detailsJSON{Packet: packetJSON(p), Receivers: make([]receiverJSON, 0, len(rs))}
	for _, rc := range rs {
		out.Receivers = append(out.Receivers, receiverJSON{User: rc.User, AmountCents: rc.AmountCents, At: unixMS(rc.OpenedAt), Seq: rc.Seq})
	}
	if len(rs) == limit {
		out.Next = strconv.Itoa(rs[len(rs)-1].Seq)
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

type historyItemJSON struct {
	PacketID    string `json:"packetId"`
	At          int64  `json:"at"`
	AmountCents int64  `json:"amountCents"`
	Count       int    `json:"count,omitempty"`
	Group       string `json:"group,omitempty"`
}

type historyJSON struct {
	Items []historyItemJSON `json:"items"`
	Next  string            `json:"next"`
}

// history pages sent or received packets newest first by (at, packetId); the cursor format
// "<at ms>:<packetId>" is the one the gateway uses to merge cells.
func (a *API) history(role packet.Role) func(http.ResponseWriter, *http.Request) error {
	return func(w http.ResponseWriter, r *http.Request) error {
		limit, err := a.limit(r)
		if err != nil {
			return err
		}
		before, err := packet.ParseCursor("before", r.URL.Query().Get("before"))
		if err != nil {
			return err
		}
		items, next, err := a.cfg.Service.History(r.Context(), r.PathValue("user"), role, before, limit)
		if err != nil {
			return err
		}
		out := historyJSON{Items: make([]historyItemJSON, 0, len(items)), Next: next.String()}
		for _, h := range items {
			out.Items = append(out.Items, historyItemJSON{PacketID: strconv.FormatInt(h.PacketID, 10), At: unixMS(h.At),
				AmountCents: h.AmountCents, Count: h.Count, Group: h.Group})
		}
		writeJSON(w, http.StatusOK, out)
		return nil
	}
}
