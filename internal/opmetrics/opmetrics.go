// Package opmetrics exports the state the operator records in RedPacketSet and RedPacketCell
// status as Prometheus gauges, read from the manager's cache at every scrape. Alerts on a
// cell that is not Available, on masked slots and the mask budget, and on an epoch roll-out
// need these; the data plane cannot see them.
//
// Every series carries namespace and set (and cell), the labels the data plane's series get
// from their pods, so alerts can join the two. The operator's scrape must keep these labels
// (honorLabels: true), as the chart's and kustomize's ServiceMonitors do.
package opmetrics

import (
	"context"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/apimachinery/pkg/api/meta"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rpv1 "github.com/redpacketset/redpacket/api/v1alpha1"
)

var (
	setLabels  = []string{"namespace", "set"}
	cellLabels = []string{"namespace", "set", "cell"}

	setCells  = prometheus.NewDesc("redpacket_set_cells", "Cells the set declares (spec.cells).", setLabels, nil)
	setReady  = prometheus.NewDesc("redpacket_set_ready_cells", "Cells of the set whose Available condition is True.", setLabels, nil)
	setMask   = prometheus.NewDesc("redpacket_set_masked_slots", "Slots of the set in which no new packet is created (status.maskedSlotCount).", setLabels, nil)
	setBudget = prometheus.NewDesc("redpacket_set_mask_budget_exhausted",
		"1 while a cell of the set has spent its mask budget and failing tables stay unmasked (SlotsMasked reason MaskBudgetExhausted).", setLabels, nil)
	setEpoch   = prometheus.NewDesc("redpacket_set_routing_epoch", "Number of the set's newest routing epoch (status.routing.currentEpoch).", setLabels, nil)
	setEpochAt = prometheus.NewDesc("redpacket_set_routing_epoch_effective_timestamp_seconds",
		"When the set's newest routing epoch takes (or took) effect, Unix seconds.", setLabels, nil)
	setCond = prometheus.NewDesc("redpacket_set_condition", "1 for the status and reason of each of the set's conditions.",
		[]string{"namespace", "set", "type", "status", "reason"}, nil)

	cellAvailable = prometheus.NewDesc("redpacket_cell_available", "1 while the cell's Available condition is True.", cellLabels, nil)
	cellServers   = prometheus.NewDesc("redpacket_cell_servers", "Server pods of the cell that exist.", cellLabels, nil)
	cellReady     = prometheus.NewDesc("redpacket_cell_ready_servers", "Server pods of the cell that are ready.", cellLabels, nil)
	cellMasked    = prometheus.NewDesc("redpacket_cell_masked_slots", "Slots of the cell masked (operator and manual).", cellLabels, nil)
	cellDraining  = prometheus.NewDesc("redpacket_cell_draining", "1 while the cell owns no slot in the current epoch.", cellLabels, nil)
	scrapeErrors  = prometheus.NewDesc("redpacket_operator_status_read_errors", "1 when the last scrape could not list the sets or cells (their gauges are then missing).", nil, nil)
)

// Collector reads status from a client (the manager's cache) at each scrape.
type Collector struct {
	c   client.Reader
	log *slog.Logger
}

// New returns a Collector over c.
func New(c client.Reader, log *slog.Logger) *Collector {
	if log == nil {
		log = slog.Default()
	}
	return &Collector{c: c, log: log}
}

// Describe implements prometheus.Collector.
func (k *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{setCells, setReady, setMask, setBudget, setEpoch, setEpochAt, setCond,
		cellAvailable, cellServers, cellReady, cellMasked, cellDraining, scrapeErrors} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (k *Collector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	sets := &rpv1.RedPacketSetList{}
	cells := &rpv1.RedPacketCellList{}
	failed := 0.0
	if err := k.c.List(ctx, sets); err != nil {
		k.log.Error("status metrics: list RedPacketSets", "err", err)
		failed = 1
	}
	if err := k.c.List(ctx, cells); err != nil {
		k.log.Error("status metrics: list RedPacketCells", "err", err)
		failed = 1
	}
	ch <- prometheus.MustNewConstMetric(scrapeErrors, prometheus.GaugeValue, failed)
	g := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	for _, s := range sets.Items {
		ns, name := s.Namespace, s.Name
		g(setCells, float64(s.Spec.Cells), ns, name)
		g(setReady, float64(s.Status.ReadyCells), ns, name)
		g(setMask, float64(s.Status.MaskedSlotCount), ns, name)
		exhausted := 0.0
		if c := meta.FindStatusCondition(s.Status.Conditions, rpv1.SetSlotsMasked); c != nil && c.Reason == rpv1.ReasonMaskBudgetExhausted {
			exhausted = 1
		}
		g(setBudget, exhausted, ns, name)
		g(setEpoch, float64(s.Status.Routing.CurrentEpoch), ns, name)
		if n := len(s.Status.Routing.Epochs); n > 0 {
			g(setEpochAt, float64(s.Status.Routing.Epochs[n-1].EffectiveTime.Unix()), ns, name)
		}
		for _, c := range s.Status.Conditions {
			g(setCond, 1, ns, name, c.Type, string(c.Status), c.Reason)
		}
	}
	for _, c := range cells.Items {
		l := []string{c.Namespace, c.Spec.SetName, c.Name}
		g(cellAvailable, b(meta.IsStatusConditionTrue(c.Status.Conditions, rpv1.CellAvailable)), l...)
		g(cellServers, float64(c.Status.Servers), l...)
		g(cellReady, float64(c.Status.ReadyServers), l...)
		masked := 0
		for _, m := range c.Status.MaskedSlots {
			masked += int(m.End - m.Start + 1)
		}
		g(cellMasked, float64(masked), l...)
		g(cellDraining, b(c.Spec.Draining), l...)
	}
}

func b(v bool) float64 {
	if v {
		return 1
	}
	return 0
}
