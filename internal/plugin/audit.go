package plugin

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	rpv1 "github.com/redpacketset/redpacket/api/v1alpha1"
	"github.com/redpacketset/redpacket/cellserver/ids"
	"github.com/redpacketset/redpacket/cellserver/routing"
	"github.com/redpacketset/redpacket/cellserver/store"
	"github.com/redpacketset/redpacket/cellserver/wallet"
	"github.com/redpacketset/redpacket/internal/loadgen"
)

// AuditResult is `kubectl redpacket audit SET`.
type AuditResult struct {
	Set        string              `json:"set"`
	OK         bool                `json:"ok"`
	Cells      []loadgen.CellAudit `json:"cells"`
	Violations []string            `json:"violations"`
}

// Audit runs docs/design.md §4's audit over every cell of the set (draining ones included):
// conservation per packet, one open per user, wallet credits and refunds matching the
// records, every packet in the cell that owned its slot when it was created, and no ID or
// idempotency key in two cells. drain bounds the wait for each cell's outbox to empty.
func (p *Plugin) Audit(ctx context.Context, name string, drain time.Duration) (*AuditResult, error) {
	set, err := p.getSet(ctx, name)
	if err != nil {
		return nil, err
	}
	cells, err := p.listCells(ctx, name)
	if err != nil {
		return nil, err
	}
	if len(cells) == 0 {
		return nil, fmt.Errorf("set %s/%s has no cells to audit", p.Namespace, name)
	}
	cm := &corev1.ConfigMap{}
	if err := p.K8s.Get(ctx, types.NamespacedName{Namespace: set.Namespace, Name: set.RoutingConfigMapName()}, cm); err != nil {
		return nil, fmt.Errorf("read routing table of %s: %w", name, err)
	}
	table, err := routing.Parse([]byte(cm.Data[rpv1.RoutingFile]))
	if err != nil {
		return nil, fmt.Errorf("routing table of %s: %w", name, err)
	}
	cfg := loadgen.AuditConfig{Layout: layoutOf(set.Spec.Template), Routing: table,
		CellSchema: orDefault(p.CellSchema, store.DefaultCellSchema), WalletSchema: orDefault(p.WalletSchema, wallet.DefaultSchema),
		From: ids.Epoch, To: p.now().Add(time.Minute), DrainTimeout: drain}
	for i := range cells {
		dsn, err := p.cellDSN(ctx, &cells[i])
		if err != nil {
			return nil, err
		}
		cfg.Cells = append(cfg.Cells, loadgen.CellDB{Name: cells[i].Name, DSN: dsn})
	}
	rep, err := loadgen.Audit(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("audit %s: %w", name, err)
	}
	res := &AuditResult{Set: name, OK: rep.OK(), Cells: rep.Cells, Violations: rep.Violations}
	if res.Violations == nil {
		res.Violations = []string{}
	}
	return res, nil
}
