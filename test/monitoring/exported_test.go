package monitoring

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	rpv1 "github.com/redpacketset/redpacket/api/v1alpha1"
	"github.com/redpacketset/redpacket/internal/envtestutil"
	"github.com/redpacketset/redpacket/internal/loadgen"
	"github.com/redpacketset/redpacket/internal/localset"
	"github.com/redpacketset/redpacket/internal/opmetrics"
	"github.com/redpacketset/redpacket/internal/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

var (
	quoted     = regexp.MustCompile(`"(?:[^"\\]|\\.)*"`)
	grafanaVar = regexp.MustCompile(`\$\{?\w+\}?`)
	rangeSel   = regexp.MustCompile(`\[[^\]]*\]`)
	ident      = regexp.MustCompile(`[a-zA-Z_:][a-zA-Z0-9_:]*`)
	selected   = regexp.MustCompile(`([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{`)
)

// metricNames are the metrics a PromQL expression (or Grafana query) reads. Every metric of
// this project starts with redpacket_ or rp_; a selector of any other name is reported too,
// so a query on a foreign metric cannot slip past the check.
func metricNames(expr string) (ours, foreign []string) {
	e := quoted.ReplaceAllString(expr, `""`)
	e = grafanaVar.ReplaceAllString(e, "")
	e = rangeSel.ReplaceAllString(e, "")
	for _, m := range selected.FindAllStringSubmatch(e, -1) {
		if !strings.HasPrefix(m[1], "redpacket_") && !strings.HasPrefix(m[1], "rp_") && m[1] != "label_values" {
			foreign = append(foreign, m[1])
		}
	}
	for _, tok := range ident.FindAllString(e, -1) {
		if strings.HasPrefix(tok, "redpacket_") || strings.HasPrefix(tok, "rp_") {
			ours = append(ours, tok)
		}
	}
	return ours, foreign
}

// scrape reads a /metrics exposition and adds every sample name it serves to names.
func scrape(t *testing.T, url string, names map[string]string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("scrape %s: %v", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("scrape %s: %s", url, resp.Status)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parse %s: %v", url, err)
	}
	for name, f := range fams {
		names[name] = url
		switch f.GetType() {
		case dto.MetricType_HISTOGRAM:
			for _, s := range []string{"_bucket", "_sum", "_count"} {
				names[name+s] = url
			}
		case dto.MetricType_SUMMARY:
			for _, s := range []string{"_sum", "_count"} {
				names[name+s] = url
			}
		}
	}
}

// exportedMetrics runs the binaries for real and reads their /metrics: a one-cell local SET
// (a cell server on its own MariaDB with memcached, and the gateway) under a little traffic,
// and the operator's status gauges over an envtest API server holding a set and a cell.
func exportedMetrics(t *testing.T) map[string]string {
	t.Helper()
	names := map[string]string{}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	set := &rpv1.RedPacketSet{
		ObjectMeta: metav1.ObjectMeta{Name: "mon"},
		Spec: rpv1.RedPacketSetSpec{
			Zones: []string{"zone-a"}, Cells: 1,
			Capacity: rpv1.CapacitySpec{PeakOpensPerSecond: 100, PerServerOpensPerSecond: 1000},
			Template: rpv1.CellTemplate{Shards: rpv1.ShardSpec{Databases: 2, TablesPerDatabase: 2}, Queue: rpv1.QueueSpec{Workers: 4}},
		},
	}
	localset.ApplyDefaults(set)
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	s, err := localset.Up(ctx, localset.Options{Set: set, DataDir: t.TempDir(), MaxServersPerCell: 1, ReadyTimeout: 3 * time.Minute, BufferPool: "64M", Log: log})
	if err != nil {
		t.Fatalf("local SET up: %v", err)
	}
	t.Cleanup(func() { _ = s.Stop() })
	// Traffic so that series created on first use (per verb, per code, batch sizes) exist.
	if _, err := loadgen.Run(ctx, loadgen.Config{Gateway: s.GatewayURL(), Concurrency: 4, Opens: 200, Duration: time.Minute,
		Groups: 4, Members: 10, MaxCount: s.State().MaxCount, MaxTotalCents: s.State().MaxTotalCents, Routing: s.Routing()}); err != nil {
		t.Fatalf("traffic: %v", err)
	}
	servers := 0
	for _, c := range s.Components() {
		switch c.Kind {
		case "cellserver", "gateway":
			scrape(t, strings.TrimSuffix(c.Addr, "/")+"/metrics", names)
			servers++
		}
	}
	if servers < 2 {
		t.Fatalf("scraped %d servers and gateways, want a cell server and a gateway", servers)
	}

	env := envtestutil.Start(t)
	obj := &rpv1.RedPacketSet{ObjectMeta: metav1.ObjectMeta{Name: "mon", Namespace: "default"}, Spec: set.Spec}
	if err := env.Client.Create(ctx, obj); err != nil {
		t.Fatal(err)
	}
	obj.Status.Routing = rpv1.RoutingStatus{CurrentEpoch: 1, Epochs: []rpv1.RoutingEpoch{{Number: 1, EffectiveTime: metav1.Now(),
		Ranges: []rpv1.OwnedSlotRange{{SlotRange: rpv1.SlotRange{Start: 0, End: 999}, Cell: "mon-cell-0"}}}}}
	if err := env.Client.Status().Update(ctx, obj); err != nil {
		t.Fatal(err)
	}
	cell := &rpv1.RedPacketCell{ObjectMeta: metav1.ObjectMeta{Name: "mon-cell-0", Namespace: "default"},
		Spec: rpv1.RedPacketCellSpec{SetName: "mon", SlotCount: 1000, Zones: []string{"zone-a"}, Servers: 1}}
	if err := env.Client.Create(ctx, cell); err != nil {
		t.Fatal(err)
	}
	// As cmd/operator registers it.
	reg := prometheus.NewRegistry()
	reg.MustRegister(opmetrics.New(env.Client, nil))
	op := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	defer op.Close()
	scrape(t, op.URL+"/metrics", names)
	return names
}

type dashboard struct {
	Panels []struct {
		Title   string `json:"title"`
		Type    string `json:"type"`
		Targets []struct {
			Expr string `json:"expr"`
		} `json:"targets"`
	} `json:"panels"`
	Templating struct {
		List []struct {
			Name  string `json:"name"`
			Type  string `json:"type"`
			Query any    `json:"query"`
		} `json:"list"`
	} `json:"templating"`
}

// TestQueriesNameExportedMetrics: every alert expression and every dashboard query (panels
// and variables) reads only metrics that a running cell server, gateway or operator serves.
func TestQueriesNameExportedMetrics(t *testing.T) {
	queries := map[string]string{} // where → expression
	for _, g := range readRules(t).Groups {
		for _, r := range g.Rules {
			queries["alert "+r.Alert] = r.Expr
		}
	}
	data, err := os.ReadFile(root + "/charts/redpacket-operator/files/dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	if err := json.Unmarshal(data, &d); err != nil {
		t.Fatalf("dashboard.json: %v", err)
	}
	panels := 0
	for _, p := range d.Panels {
		if p.Type == "row" {
			continue
		}
		panels++
		if len(p.Targets) == 0 {
			t.Errorf("dashboard panel %q has no query", p.Title)
		}
		for i, tg := range p.Targets {
			queries[fmt.Sprintf("panel %q query %d", p.Title, i)] = tg.Expr
		}
	}
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		q, _ := v.Query.(map[string]any)
		expr, _ := q["query"].(string)
		queries["variable "+v.Name] = expr
	}
	if panels == 0 {
		t.Fatal("dashboard has no panels")
	}

	exported := exportedMetrics(t)
	var where []string
	for w := range queries {
		where = append(where, w)
	}
	sort.Strings(where)
	for _, w := range where {
		ours, foreign := metricNames(queries[w])
		if len(ours) == 0 {
			t.Errorf("%s reads no redpacket metric: %s", w, queries[w])
		}
		for _, f := range foreign {
			t.Errorf("%s reads %s, which no binary of this project exports", w, f)
		}
		for _, m := range ours {
			if _, ok := exported[m]; !ok {
				t.Errorf("%s reads %s, which no binary exported", w, m)
			}
		}
	}
}

// TestMetricNamesFindsSelectorsAndSkipsLabels pins the extractor the check above relies on.
func TestMetricNamesFindsSelectorsAndSkipsLabels(t *testing.T) {
	for _, c := range []struct {
		expr          string
		ours, foreign string
	}{
		{`sum by (cell) (rate(redpacket_http_request_duration_seconds_count{namespace="$namespace",verb="open"}[$__rate_interval]))`, "redpacket_http_request_duration_seconds_count", ""},
		{`max(rp_gateway_routing_epoch) > on (set) min(redpacket_ids_routing_epoch or rp_gateway_routing_epoch)`, "rp_gateway_routing_epoch redpacket_ids_routing_epoch rp_gateway_routing_epoch", ""},
		{`up{job="x"} + redpacket_queue_depth{table="redpacket_fake"}`, "redpacket_queue_depth", "up"},
		{`label_values(redpacket_set_cells{namespace="$namespace"}, set)`, "redpacket_set_cells", ""},
	} {
		ours, foreign := metricNames(c.expr)
		if strings.Join(ours, " ") != c.ours || strings.Join(foreign, " ") != c.foreign {
			t.Errorf("%s: ours %v foreign %v, want %q and %q", c.expr, ours, foreign, c.ours, c.foreign)
		}
	}
}
