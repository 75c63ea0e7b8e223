package packaging

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/engine"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"

	"github.com/redpacketset/redpacket/internal/envtestutil"
)

// kubeVersion is the envtest control plane's version (hack/build-envtest.sh), which the
// chart's kubeVersion constraint must admit as `helm install` would check.
const kubeVersion = "v1.37.2"

var (
	chartDir   = filepath.Join(envtestutil.RepoRoot(), "charts", "redpacket-operator")
	configDir  = filepath.Join(envtestutil.RepoRoot(), "config")
	crdBaseDir = filepath.Join(configDir, "crd", "bases")
)

// renderChart does what `helm template NAME charts/redpacket-operator -n NS --set ...` does,
// with Helm's own loader, values coalescing (and schema validation) and template engine.
func renderChart(name, namespace string, values map[string]any) ([]*unstructured.Unstructured, string, error) {
	ch, err := loader.Load(chartDir)
	if err != nil {
		return nil, "", fmt.Errorf("load chart %s: %w", chartDir, err)
	}
	if c := ch.Metadata.KubeVersion; c != "" && !chartutil.IsCompatibleRange(c, kubeVersion) {
		return nil, "", fmt.Errorf("chart kubeVersion %q does not admit %s", c, kubeVersion)
	}
	caps := chartutil.DefaultCapabilities.Copy()
	kv, err := chartutil.ParseKubeVersion(kubeVersion)
	if err != nil {
		return nil, "", fmt.Errorf("parse kube version: %w", err)
	}
	caps.KubeVersion = *kv
	opts := chartutil.ReleaseOptions{Name: name, Namespace: namespace, Revision: 1, IsInstall: true}
	vals, err := chartutil.ToRenderValues(ch, values, opts, caps)
	if err != nil {
		return nil, "", fmt.Errorf("chart values: %w", err)
	}
	files, err := engine.Render(ch, vals)
	if err != nil {
		return nil, "", fmt.Errorf("render chart: %w", err)
	}
	names := make([]string, 0, len(files))
	for f := range files {
		names = append(names, f)
	}
	sort.Strings(names)
	var objs []*unstructured.Unstructured
	var notes string
	for _, f := range names {
		if strings.HasSuffix(f, "NOTES.txt") {
			notes = files[f]
			continue
		}
		docs, err := decodeDocuments([]byte(files[f]))
		if err != nil {
			return nil, "", fmt.Errorf("decode %s: %w", f, err)
		}
		objs = append(objs, docs...)
	}
	return objs, notes, nil
}

// renderKustomize does what `kubectl kustomize DIR` does.
func renderKustomize(dir string) ([]*unstructured.Unstructured, error) {
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	m, err := k.Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		return nil, fmt.Errorf("kustomize %s: %w", dir, err)
	}
	out, err := m.AsYaml()
	if err != nil {
		return nil, fmt.Errorf("kustomize %s as YAML: %w", dir, err)
	}
	return decodeDocuments(out)
}

// decodeDocuments splits a multi-document YAML stream into objects, dropping empty ones.
func decodeDocuments(data []byte) ([]*unstructured.Unstructured, error) {
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
	var objs []*unstructured.Unstructured
	for {
		var m map[string]any
		if err := dec.Decode(&m); err != nil {
			if errors.Is(err, io.EOF) {
				return objs, nil
			}
			return nil, err
		}
		if len(m) == 0 {
			continue
		}
		u := &unstructured.Unstructured{Object: m}
		if u.GetKind() == "" || u.GetAPIVersion() == "" || u.GetName() == "" {
			return nil, fmt.Errorf("document without kind, apiVersion or name: %v", m)
		}
		objs = append(objs, u)
	}
}

// byKind picks the objects of one kind.
func byKind(objs []*unstructured.Unstructured, kind string) []*unstructured.Unstructured {
	var out []*unstructured.Unstructured
	for _, o := range objs {
		if o.GetKind() == kind {
			out = append(out, o)
		}
	}
	return out
}

// one is the single object of a kind, failing the test when there are none or several.
func one(t *testing.T, objs []*unstructured.Unstructured, kind string) *unstructured.Unstructured {
	t.Helper()
	got := byKind(objs, kind)
	if len(got) != 1 {
		t.Fatalf("want exactly one %s, got %d", kind, len(got))
	}
	return got[0]
}

// crdBases are the CRDs controller-gen wrote into config/crd/bases, by name.
func crdBases(t *testing.T) map[string]*unstructured.Unstructured {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(crdBaseDir, "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no CRDs in %s (%v)", crdBaseDir, err)
	}
	out := map[string]*unstructured.Unstructured{}
	for _, f := range files {
		objs := readYAMLFile(t, f)
		for _, o := range objs {
			out[o.GetName()] = o
		}
	}
	return out
}

func readYAMLFile(t *testing.T, path string) []*unstructured.Unstructured {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	objs, err := decodeDocuments(data)
	if err != nil {
		t.Fatalf("decode %s: %v", path, err)
	}
	return objs
}

// nested reads a field, failing the test when it is missing.
func nested(t *testing.T, o *unstructured.Unstructured, fields ...string) any {
	t.Helper()
	v, ok, err := unstructured.NestedFieldNoCopy(o.Object, fields...)
	if err != nil || !ok {
		t.Fatalf("%s %s: no field %s (%v)", o.GetKind(), o.GetName(), strings.Join(fields, "."), err)
	}
	return v
}
