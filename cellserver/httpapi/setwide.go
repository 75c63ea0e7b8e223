package httpapi

import (
	"net/http"
	"strconv"

	"github.com/redpacketset/redpacket/cellserver/packet"
	"github.com/redpacketset/redpacket/cellserver/routing"
)

// findWrap: 200 with the packet this cell holds for the body's (sender, requestId), else 404.
func (a *API) findWrap(w http.ResponseWriter, r *http.Request) error {
	var b wrapBody
	if err := decode(r, &b); err != nil {
		return err
	}
	p, found, err := a.cfg.Service.FindWrap(r.Context(), packet.WrapRequest{Sender: b.Sender, RequestID: b.RequestID,
		TotalCents: b.TotalCents, Count: b.Count, Kind: packet.Kind(b.Kind), Group: b.Group, Greeting: b.Greeting})
	if err != nil {
		return err
	}
	if !found {
		return &apiError{status: http.StatusNotFound, code: routing.CodeNotFound, field: "requestId", msg: "no packet wrapped here under this request"}
	}
	writeJSON(w, http.StatusOK, packetJSON(p))
	return nil
}

type claimBody struct {
	PaymentTxnID string `json:"paymentTxnId"`
	PacketID     string `json:"packetId"`
	AmountCents  int64  `json:"amountCents"`
}

func claimJSON(c packet.PaymentClaim) claimBody {
	return claimBody{PaymentTxnID: c.PaymentTxnID, PacketID: strconv.FormatInt(c.PacketID, 10), AmountCents: c.AmountCents}
}

// claimPayment: 200 with the claim in force for the body's paymentTxnId.
func (a *API) claimPayment(w http.ResponseWriter, r *http.Request) error {
	var b claimBody
	if err := decode(r, &b); err != nil {
		return err
	}
	id, err := routing.ParsePacketID(b.PacketID)
	if err != nil {
		return &apiError{status: http.StatusBadRequest, code: routing.CodeInvalidInput, field: "packetId", msg: "packet id must be a positive decimal integer"}
	}
	c, err := a.cfg.Service.ClaimPayment(r.Context(), id, packet.PayRequest{PaymentTxnID: b.PaymentTxnID, AmountCents: b.AmountCents})
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, claimJSON(c))
	return nil
}

// findPaymentClaim: 200 with the claim this cell holds for the body's paymentTxnId, else 404.
func (a *API) findPaymentClaim(w http.ResponseWriter, r *http.Request) error {
	var b struct {
		PaymentTxnID string `json:"paymentTxnId"`
	}
	if err := decode(r, &b); err != nil {
		return err
	}
	c, found, err := a.cfg.Service.FindPaymentClaim(r.Context(), b.PaymentTxnID)
	if err != nil {
		return err
	}
	if !found {
		return &apiError{status: http.StatusNotFound, code: routing.CodeNotFound, field: "paymentTxnId", msg: "no claim for this payment here"}
	}
	writeJSON(w, http.StatusOK, claimJSON(c))
	return nil
}
