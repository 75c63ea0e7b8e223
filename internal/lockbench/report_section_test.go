package lockbench

import (
	"strings"
	"testing"
)

func TestReplaceSection(t *testing.T) {
	doc := "# Benchmarks\n\nintro\n"
	first, err := ReplaceSection(doc, "table v1\n")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(first, "# Benchmarks\n\nintro\n\n"+SummaryBegin+"\ntable v1\n"+SummaryEnd) {
		t.Fatalf("section not appended: %q", first)
	}
	second, err := ReplaceSection(first+"\nafter\n", "table v2\n")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(second, "v1") || !strings.Contains(second, "table v2\n"+SummaryEnd) || !strings.HasSuffix(second, "\nafter\n") {
		t.Fatalf("section not replaced in place: %q", second)
	}
	if _, err := ReplaceSection(SummaryEnd+"\n"+SummaryBegin, "x"); err == nil {
		t.Fatal("markers out of order accepted")
	}
}
