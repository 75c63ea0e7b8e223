package controllers_test

import (
	"context"
	"fmt"
	"reflect"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	rpv1 "github.com/redpacketset/redpacket/api/v1alpha1"
	"github.com/redpacketset/redpacket/cellserver/control"
	"github.com/redpacketset/redpacket/cellserver/routing"
	"github.com/redpacketset/redpacket/controllers"
	"github.com/redpacketset/redpacket/internal/envtestutil"
	"github.com/redpacketset/redpacket/internal/testenv"
)

// TestRoutingTablePublishedInEveryCell: the table the operator publishes in the ConfigMap is
// also in every cell's control schema, epoch for epoch, so servers load a new epoch from their
// own database instead of waiting for the kubelet to refresh the mounted file.
func TestRoutingTablePublishedInEveryCell(t *testing.T) {
	env := envtestutil.Start(t)
	c := env.Client
	ctx := context.Background()
	dbs, open := cellDatabases(t, "pub-cell-0", "pub-cell-1")
	startManager(t, env, controllers.Options{OpenCellDB: open})
	set := &rpv1.RedPacketSet{
		ObjectMeta: metav1.ObjectMeta{Name: "pub", Namespace: "default"},
		Spec: rpv1.RedPacketSetSpec{
			Zones:          []string{"zone-a", "zone-b"},
			Cells:          2,
			Capacity:       rpv1.CapacitySpec{PeakOpensPerSecond: 1000, PerServerOpensPerSecond: 1000},
			RebalanceDelay: &rpv1.Duration{Duration: time.Minute},
		},
	}
	createReady(t, ctx, c, set)

	inEveryCell := func(want int64) {
		t.Helper()
		testenv.Eventually(t, 30*time.Second, fmt.Sprintf("epoch %d published in every cell", want), func() error {
			cm, err := routingTable(ctx, c, set)
			if err != nil {
				return err
			}
			if cm.Latest().Number != want {
				return fmt.Errorf("ConfigMap at epoch %d", cm.Latest().Number)
			}
			for name, db := range dbs {
				body, n, err := control.ReadPublishedTable(ctx, db, control.DefaultSchema, want-1)
				if err != nil {
					return fmt.Errorf("%s: %w", name, err)
				}
				if n != want {
					return fmt.Errorf("%s holds epoch %d", name, n)
				}
				got, err := routing.Parse(body)
				if err != nil {
					return fmt.Errorf("%s: %w", name, err)
				}
				if !reflect.DeepEqual(got.Epochs, cm.Epochs) {
					return fmt.Errorf("%s: epochs %+v, ConfigMap %+v", name, got.Epochs, cm.Epochs)
				}
			}
			return nil
		})
	}
	inEveryCell(1)
	scale(t, ctx, c, set, 1)
	inEveryCell(2)
}
