// Command oci-pack writes a container image tarball (docker-archive, which
// `ctr -n k8s.io images import` reads) from layer tarballs and single files, without a
// container engine or registry.
//
//	oci-pack -o out.tar -tag name:tag [-layer rootfs.tar]... [-file src=/dst]... \
//	  [-entrypoint /bin]... [-cmd arg]... [-user uid:gid] [-env K=V]... [-port 80/tcp]...
package main

import (
	"archive/tar"
	"bytes"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

type list []string

func (l *list) String() string     { return strings.Join(*l, ",") }
func (l *list) Set(v string) error { *l = append(*l, v); return nil }

func main() {
	var layers, files, entrypoint, cmd, env, ports list
	out := flag.String("o", "", "output tarball")
	tag := flag.String("tag", "", "image reference, e.g. ghcr.io/redpacketset/gateway:v0.1.0")
	user := flag.String("user", "", "user (uid:gid or name) the image runs as")
	workdir := flag.String("workdir", "/", "working directory")
	flag.Var(&layers, "layer", "a layer tarball (repeatable, bottom first)")
	flag.Var(&files, "file", "src=/dst: one file in a layer above the tarballs (repeatable)")
	flag.Var(&entrypoint, "entrypoint", "entrypoint word (repeatable)")
	flag.Var(&cmd, "cmd", "cmd word (repeatable)")
	flag.Var(&env, "env", "K=V (repeatable)")
	flag.Var(&ports, "port", "exposed port, e.g. 3306/tcp (repeatable)")
	flag.Parse()
	if err := pack(*out, *tag, *user, *workdir, layers, files, entrypoint, cmd, env, ports); err != nil {
		slog.Error("oci-pack failed", "image", *tag, "err", err)
		os.Exit(1)
	}
}

func pack(out, tag, user, workdir string, layers, files, entrypoint, cmd, env, ports []string) error {
	if out == "" || tag == "" {
		return fmt.Errorf("-o and -tag are required")
	}
	ref, err := name.NewTag(tag)
	if err != nil {
		return fmt.Errorf("parse tag %q: %w", tag, err)
	}
	var ls []v1.Layer
	for _, p := range layers {
		l, err := tarball.LayerFromFile(p)
		if err != nil {
			return fmt.Errorf("layer %s: %w", p, err)
		}
		ls = append(ls, l)
	}
	if len(files) > 0 {
		data, err := fileLayer(files)
		if err != nil {
			return err
		}
		l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil })
		if err != nil {
			return fmt.Errorf("file layer: %w", err)
		}
		ls = append(ls, l)
	}
	img, err := mutate.AppendLayers(empty.Image, ls...)
	if err != nil {
		return fmt.Errorf("append layers: %w", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return fmt.Errorf("read config: %w", err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", runtime.GOARCH
	// A fixed creation time keeps the image ID a function of its content.
	cf.Created = v1.Time{Time: time.Unix(0, 0).UTC()}
	cf.Config.Entrypoint, cf.Config.Cmd = entrypoint, cmd
	cf.Config.User, cf.Config.WorkingDir = user, workdir
	cf.Config.Env = env
	if len(ports) > 0 {
		cf.Config.ExposedPorts = map[string]struct{}{}
		for _, p := range ports {
			cf.Config.ExposedPorts[p] = struct{}{}
		}
	}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return fmt.Errorf("set config: %w", err)
	}
	tmp := out + ".tmp"
	if err := tarball.WriteToFile(tmp, ref, img); err != nil {
		return fmt.Errorf("write %s: %w", out, err)
	}
	return os.Rename(tmp, out)
}

// fileLayer is a tar of the given files with their parent directories, owned by root, each
// keeping its source's permission bits.
func fileLayer(files []string) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	dirs := map[string]bool{}
	for _, f := range files {
		src, dst, ok := strings.Cut(f, "=")
		if !ok || !strings.HasPrefix(dst, "/") {
			return nil, fmt.Errorf("-file %q: want src=/dst", f)
		}
		data, err := os.ReadFile(src)
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", src, err)
		}
		st, err := os.Stat(src)
		if err != nil {
			return nil, fmt.Errorf("stat %s: %w", src, err)
		}
		rel := strings.TrimPrefix(dst, "/")
		parts := strings.Split(rel, "/")
		for i := 1; i < len(parts); i++ {
			d := strings.Join(parts[:i], "/") + "/"
			if !dirs[d] {
				dirs[d] = true
				if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d, Mode: 0o755, ModTime: time.Unix(0, 0)}); err != nil {
					return nil, fmt.Errorf("tar %s: %w", d, err)
				}
			}
		}
		hdr := &tar.Header{Typeflag: tar.TypeReg, Name: rel, Mode: int64(st.Mode().Perm()), Size: int64(len(data)), ModTime: time.Unix(0, 0)}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, fmt.Errorf("tar %s: %w", rel, err)
		}
		if _, err := tw.Write(data); err != nil {
			return nil, fmt.Errorf("tar %s: %w", rel, err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("close tar: %w", err)
	}
	return buf.Bytes(), nil
}
