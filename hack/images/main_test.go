package main

import (
	"archive/tar"
	"debug/elf"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/redpacketset/redpacket/internal/envtestutil"
)

// TestProjectImage builds the gateway image the way `make images` does and reads the tarball
// back as a runtime would: tagged as the manifests name it, running as 65532 from the
// binary's path, statically linked, and nothing in it a shell could be.
func TestProjectImage(t *testing.T) {
	root := envtestutil.RepoRoot()
	t.Chdir(root)
	out := t.TempDir()
	if err := project([]string{"-version", "v0.0.0-test", "-out", out, "-only", "gateway"}, slog.Default()); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(out, "gateway.tar")
	tag, err := name.NewTag("ghcr.io/redpacketset/gateway:v0.0.0-test")
	if err != nil {
		t.Fatal(err)
	}
	img, err := tarball.ImageFromPath(path, &tag)
	if err != nil {
		t.Fatalf("tarball does not hold %s: %v", tag, err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cf.Config.User != "65532:65532" {
		t.Errorf("user %q, want 65532:65532 (numeric, so the kubelet can verify runAsNonRoot)", cf.Config.User)
	}
	if strings.Join(cf.Config.Entrypoint, " ") != "/usr/local/bin/gateway" || len(cf.Config.Cmd) != 0 {
		t.Errorf("entrypoint %q cmd %q, want the binary alone (pods pass only args)", cf.Config.Entrypoint, cf.Config.Cmd)
	}
	if cf.OS != "linux" || cf.Architecture == "" {
		t.Errorf("platform %s/%s", cf.OS, cf.Architecture)
	}

	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	files := map[string]*tar.Header{}
	var binary []byte
	for _, l := range layers {
		rc, err := l.Uncompressed()
		if err != nil {
			t.Fatal(err)
		}
		tr := tar.NewReader(rc)
		for {
			h, err := tr.Next()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			files["/"+strings.TrimSuffix(h.Name, "/")] = h
			if h.Name == "usr/local/bin/gateway" {
				if binary, err = io.ReadAll(tr); err != nil {
					t.Fatal(err)
				}
			}
		}
		rc.Close()
	}
	shell := regexp.MustCompile(`(^|/)(sh|bash|dash|ash|zsh|busybox|env)$`)
	for p, h := range files {
		if shell.MatchString(p) {
			t.Errorf("image holds %s", p)
		}
		if h.Typeflag == tar.TypeReg && h.Mode&0o111 != 0 && p != "/usr/local/bin/gateway" {
			t.Errorf("image holds another executable: %s", p)
		}
		if h.Typeflag == tar.TypeSymlink || h.Typeflag == tar.TypeLink {
			t.Errorf("image holds a link %s -> %s", p, h.Linkname)
		}
	}
	if h := files["/usr/local/bin/gateway"]; h == nil || h.Mode&0o111 == 0 {
		t.Fatal("no executable /usr/local/bin/gateway")
	}
	bin := filepath.Join(t.TempDir(), "gateway")
	if err := os.WriteFile(bin, binary, 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Error("the binary is dynamically linked; the image has no libc")
		}
	}
	if libs, _ := f.ImportedLibraries(); len(libs) > 0 {
		t.Errorf("the binary needs %v", libs)
	}
	passwd := files["/etc/passwd"]
	if passwd == nil {
		t.Error("no /etc/passwd naming the user")
	}
}

// TestVersionInOnePlace: VERSION is the tag `make images` writes; everything that names a
// project image must name that tag, or an install pulls an image nobody built.
func TestVersionInOnePlace(t *testing.T) {
	root := envtestutil.RepoRoot()
	raw, err := os.ReadFile(filepath.Join(root, "VERSION"))
	if err != nil {
		t.Fatal(err)
	}
	version := strings.TrimSpace(string(raw))
	if !regexp.MustCompile(`^v\d+\.\d+\.\d+`).MatchString(version) {
		t.Fatalf("VERSION %q", version)
	}
	want := map[string][]string{
		"config/manager/manager.yaml":                                {"ghcr.io/redpacketset/operator:" + version},
		"charts/redpacket-operator/Chart.yaml":                       {"appVersion: " + version},
		"config/crd/bases/redpacket.dev_redpacketsets.yaml":          {"ghcr.io/redpacketset/cellserver:" + version, "ghcr.io/redpacketset/gateway:" + version},
		"config/samples/redpacket_v1alpha1_redpacketset.yaml":        {"ghcr.io/redpacketset/cellserver:" + version},
		"charts/redpacket-operator/templates/crd-redpacketsets.yaml": {"ghcr.io/redpacketset/cellserver:" + version},
	}
	other := regexp.MustCompile(`ghcr\.io/redpacketset/(operator|cellserver|gateway):(v[0-9][^\s"']*)`)
	for file, needles := range want {
		b, err := os.ReadFile(filepath.Join(root, file))
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range needles {
			if !strings.Contains(string(b), n) {
				t.Errorf("%s does not name %s", file, n)
			}
		}
		for _, m := range other.FindAllStringSubmatch(string(b), -1) {
			if m[2] != version {
				t.Errorf("%s names %s, VERSION is %s", file, m[0], version)
			}
		}
	}
}
