package localset

import (
	"slices"
	"testing"
)

func TestGoMaxProcsEnv(t *testing.T) {
	cases := []struct {
		name            string
		cpus, processes int
		inherited       string
		want            []string
	}{
		{"the sample SET on 2 cores: 8 servers and a gateway", 2, 9, "", []string{"GOMAXPROCS=1"}},
		{"more processes than cores: still one each", 2, 40, "", []string{"GOMAXPROCS=1"}},
		{"a big machine divides its cores", 32, 9, "", []string{"GOMAXPROCS=3"}},
		{"one process gets every core", 8, 1, "", []string{"GOMAXPROCS=8"}},
		{"the caller's own GOMAXPROCS is left alone", 2, 9, "4", nil},
		{"nothing to start", 2, 0, "", nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := goMaxProcsEnv(c.cpus, c.processes, c.inherited); !slices.Equal(got, c.want) {
				t.Fatalf("goMaxProcsEnv(%d, %d, %q) = %v, want %v", c.cpus, c.processes, c.inherited, got, c.want)
			}
		})
	}
}
