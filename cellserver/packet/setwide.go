package packet

import (
	"context"
	"fmt"

	"github.com/redpacketset/redpacket/cellserver/ids"
	"github.com/redpacketset/redpacket/cellserver/routing"
	"github.com/redpacketset/redpacket/cellserver/store"
)

// PaymentClaim binds a paymentTxnId to the one packet it may activate, set-wide.
type PaymentClaim = store.PaymentClaim

// home checks that this cell is the home of key now.
func (s *Service) home(key string) error {
	if s.cfg.Home == nil {
		return nil
	}
	if err := s.cfg.Home(key, s.cfg.Now()); err != nil {
		return fmt.Errorf("%w: %w", ErrKeyElsewhere, err)
	}
	return nil
}

// wrapRefused answers a wrap this cell will not create: the packet already wrapped here under
// the request's key if there is one (with the usual content check), else refusal.
func (s *Service) wrapRefused(ctx context.Context, r WrapRequest, refusal error) (Packet, bool, error) {
	got, found, err := s.FindWrap(ctx, r)
	switch {
	case err != nil && !store.IsRefusal(err):
		return Packet{}, false, fmt.Errorf("%w (and the retry lookup failed: %v)", refusal, err)
	case err != nil:
		return Packet{}, false, err
	case found:
		return got, false, nil
	}
	return Packet{}, false, refusal
}

// FindWrap returns the packet this cell holds for r's (sender, requestId), refusing with
// ErrIdempotencyClash when r's content differs from it. It creates nothing: the gateway asks an
// earlier home of the key before the key's current home may create.
func (s *Service) FindWrap(ctx context.Context, r WrapRequest) (Packet, bool, error) {
	if err := ValidateWrap(r, s.cfg.Limits); err != nil {
		return Packet{}, false, err
	}
	got, found, err := s.st.FindWrap(ctx, r.Sender, r.RequestID)
	if err != nil || !found {
		return Packet{}, false, err
	}
	if !got.SameWrap(Packet{TotalCents: r.TotalCents, Count: r.Count, Kind: r.Kind, Group: r.Group, Greeting: r.Greeting}) {
		return Packet{}, false, fmt.Errorf("request %s already wrapped packet %d: %w", r.RequestID, got.ID, ErrIdempotencyClash)
	}
	return got, true, nil
}

// ClaimPayment binds the notice's paymentTxnId to packet id in this, the txn's home cell, or
// returns the claim already in force; a claim for another packet is ErrPaymentReused. The
// packet itself may live in any cell: the gateway pays it there only once the claim holds.
func (s *Service) ClaimPayment(ctx context.Context, id int64, r PayRequest) (PaymentClaim, error) {
	if err := ValidatePay(r, s.cfg.Limits); err != nil {
		return PaymentClaim{}, err
	}
	if _, err := ids.Decompose(id); err != nil {
		return PaymentClaim{}, invalid("packetId", "%v", err)
	}
	want := PaymentClaim{PaymentTxnID: r.PaymentTxnID, PacketID: id, AmountCents: r.AmountCents}
	key := routing.PaymentKey(r.PaymentTxnID)
	if err := s.home(key); err != nil {
		got, found, ferr := s.st.FindPaymentClaim(ctx, r.PaymentTxnID)
		switch {
		case ferr != nil:
			return PaymentClaim{}, fmt.Errorf("%w (and the claim lookup failed: %v)", err, ferr)
		case found && got.PacketID != id:
			return PaymentClaim{}, fmt.Errorf("payment %s claimed for packet %d: %w", r.PaymentTxnID, got.PacketID, ErrPaymentReused)
		case found:
			return got, nil
		}
		return PaymentClaim{}, err
	}
	return s.st.ClaimPayment(ctx, want, s.cfg.Now(), func() error { return s.home(key) })
}

// FindPaymentClaim returns the claim of txn held in this cell, if any.
func (s *Service) FindPaymentClaim(ctx context.Context, txn string) (PaymentClaim, bool, error) {
	if err := validateID("paymentTxnId", txn, s.cfg.Limits.MaxIDLength); err != nil {
		return PaymentClaim{}, false, err
	}
	return s.st.FindPaymentClaim(ctx, txn)
}
