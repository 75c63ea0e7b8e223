// Package images builds the container images the operator's pods run, as image tarballs that
// `ctr images import`, `docker load` or `kind load image-archive` take, without a container
// runtime or a registry: the project's static binaries on an empty base (no shell, no package
// manager, user 65532), and images from a prepared root filesystem (the MariaDB and memcached
// stand-ins built from Debian packages, hack/images/debian-rootfs.sh).
package images

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
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

// NonRootUID is the user (and group) the project's images run as; the operator's pod specs
// name the same number (controllers, restricted Pod Security).
const NonRootUID = 65532

// BinaryDir is where a project image keeps its binary.
const BinaryDir = "/usr/local/bin"

// epoch is every file's and every image's time: the same binary makes the same image.
var epoch = time.Unix(0, 0).UTC()

// Binary describes one project image.
type Binary struct {
	Name    string // binary and image name: operator, cellserver, gateway
	Path    string // the built, statically linked binary
	Version string // the image tag and the org.opencontainers.image.version label
}

// Project is the image of one static binary: the binary, an /etc/passwd and /etc/group
// naming the non-root user (so tools that print the user find a name), and an empty /tmp. No
// shell: `kubectl exec` into it has nothing to run, and neither has an attacker.
func Project(b Binary) (v1.Image, error) {
	bin, err := os.ReadFile(b.Path)
	if err != nil {
		return nil, fmt.Errorf("images: read %s binary: %w", b.Name, err)
	}
	files := []file{
		{path: "etc/", mode: 0o755, dir: true},
		{path: "etc/passwd", mode: 0o644, data: []byte(fmt.Sprintf("root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:%d:%d:nonroot:/home/nonroot:/sbin/nologin\n", NonRootUID, NonRootUID))},
		{path: "etc/group", mode: 0o644, data: []byte(fmt.Sprintf("root:x:0:\nnonroot:x:%d:\n", NonRootUID))},
		{path: "home/", mode: 0o755, dir: true},
		{path: "home/nonroot/", mode: 0o700, dir: true, uid: NonRootUID},
		{path: "tmp/", mode: 0o1777, dir: true},
		{path: "usr/", mode: 0o755, dir: true},
		{path: "usr/local/", mode: 0o755, dir: true},
		{path: "usr/local/bin/", mode: 0o755, dir: true},
		{path: strings.TrimPrefix(BinaryDir, "/") + "/" + b.Name, mode: 0o755, data: bin},
	}
	layer, err := layerOf(files)
	if err != nil {
		return nil, fmt.Errorf("images: %s layer: %w", b.Name, err)
	}
	user := fmt.Sprintf("%d:%d", NonRootUID, NonRootUID)
	return build([]v1.Layer{layer}, v1.Config{
		User:       user,
		Entrypoint: []string{BinaryDir + "/" + b.Name},
		WorkingDir: "/home/nonroot",
		Env:        []string{"PATH=" + BinaryDir},
		Labels: map[string]string{
			"org.opencontainers.image.title":   b.Name,
			"org.opencontainers.image.version": b.Version,
			"org.opencontainers.image.source":  "https://github.com/redpacketset/redpacket",
		},
	})
}

// File is one file an image carries in a layer of its own, above its root filesystem: an
// entrypoint or a setting changed without rebuilding (and re-shipping) the rootfs layer.
type File struct {
	Src  string // on this machine
	Dst  string // absolute path in the image
	Mode int64  // 0: 0755
}

// Rootfs is an image of the tar of a prepared root filesystem (none when rootfsTar is empty),
// with extra files in one layer above it.
func Rootfs(rootfsTar string, cfg v1.Config, extra ...File) (v1.Image, error) {
	var layers []v1.Layer
	if rootfsTar != "" {
		layer, err := tarball.LayerFromFile(rootfsTar)
		if err != nil {
			return nil, fmt.Errorf("images: layer from %s: %w", rootfsTar, err)
		}
		layers = append(layers, layer)
	}
	if len(extra) > 0 {
		var files []file
		dirs := map[string]bool{}
		for _, f := range extra {
			if !strings.HasPrefix(f.Dst, "/") {
				return nil, fmt.Errorf("images: %s: the path in the image must be absolute", f.Dst)
			}
			data, err := os.ReadFile(f.Src)
			if err != nil {
				return nil, fmt.Errorf("images: %w", err)
			}
			rel := strings.TrimPrefix(f.Dst, "/")
			// Parents first, or a runtime unpacking an image with no rootfs below has nowhere
			// to put the file.
			for i := strings.Index(rel, "/"); i >= 0; i = next(rel, i) {
				if d := rel[:i+1]; !dirs[d] {
					dirs[d] = true
					files = append(files, file{path: d, mode: 0o755, dir: true})
				}
			}
			mode := f.Mode
			if mode == 0 {
				mode = 0o755
			}
			files = append(files, file{path: rel, mode: mode, data: data})
		}
		layer, err := layerOf(files)
		if err != nil {
			return nil, fmt.Errorf("images: extra files: %w", err)
		}
		layers = append(layers, layer)
	}
	if len(layers) == 0 {
		return nil, fmt.Errorf("images: neither a root filesystem nor files")
	}
	return build(layers, cfg)
}

// next is the index of the '/' after position i in s, or -1.
func next(s string, i int) int {
	j := strings.Index(s[i+1:], "/")
	if j < 0 {
		return -1
	}
	return i + 1 + j
}

func build(layers []v1.Layer, cfg v1.Config) (v1.Image, error) {
	img, err := mutate.AppendLayers(empty.Image, layers...)
	if err != nil {
		return nil, fmt.Errorf("images: append layers: %w", err)
	}
	if img, err = mutate.Config(img, cfg); err != nil {
		return nil, fmt.Errorf("images: config: %w", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("images: config file: %w", err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", runtime.GOARCH
	cf.Created = v1.Time{Time: epoch}
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		return nil, fmt.Errorf("images: platform: %w", err)
	}
	return img, nil
}

// Write stores img under every tag in one tarball at path (written to a temporary file and
// renamed, so a failed build leaves no half image for an import to pick up).
func Write(path string, img v1.Image, tags ...string) error {
	if len(tags) == 0 {
		return fmt.Errorf("images: %s: no tag", path)
	}
	refs := map[name.Reference]v1.Image{}
	for _, t := range tags {
		tag, err := name.NewTag(t, name.StrictValidation)
		if err != nil {
			return fmt.Errorf("images: tag %q: %w", t, err)
		}
		refs[tag] = img
	}
	tmp := path + ".partial"
	if err := tarball.MultiRefWriteToFile(tmp, refs); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("images: write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("images: %w", err)
	}
	return nil
}

type file struct {
	path string
	mode int64
	dir  bool
	uid  int
	data []byte
}

func layerOf(files []file) (v1.Layer, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range files {
		h := &tar.Header{Name: f.path, Mode: f.mode, Uid: f.uid, Gid: f.uid, ModTime: epoch, Format: tar.FormatPAX}
		if f.dir {
			h.Typeflag = tar.TypeDir
		} else {
			h.Typeflag, h.Size = tar.TypeReg, int64(len(f.data))
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if _, err := tw.Write(f.data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	raw := buf.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(raw)), nil })
}
