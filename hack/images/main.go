// Command images writes the image tarballs `make images`, `make images-debian` and the real-node harness (hack/node) produce.
//
//	images project -version v0.1.0 -out bin/images
//	    builds cmd/operator, cmd/cellserver and cmd/gateway as static binaries and writes
//	    <out>/<name>.tar tagged <registry>/<name>:<version>.
//	images rootfs -rootfs rootfs.tar -out mariadb.tar -tag docker.io/library/mariadb:10.11 \
//	    -user 999:999 -entrypoint '["docker-entrypoint.sh"]' -cmd '["mariadbd"]' -env K=V …
//	    [-file src=/dst ...]
//	    wraps a prepared root filesystem (hack/node/images.sh builds the Debian one) as an
//	    image, with single files in a layer above it; -rootfs may be left out for an image of
//	    files alone (the test cluster's pause image).
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/redpacketset/redpacket/internal/images"
)

// Binaries are the project's images; each is cmd/<name>.
var Binaries = []string{"operator", "cellserver", "gateway"}

func main() {
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: images project|rootfs [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "project":
		err = project(os.Args[2:], log)
	case "rootfs":
		err = rootfs(os.Args[2:], log)
	default:
		err = fmt.Errorf("unknown command %q (project or rootfs)", os.Args[1])
	}
	if err != nil {
		log.Error("images failed", "err", err)
		os.Exit(1)
	}
}

func project(args []string, log *slog.Logger) error {
	fs := flag.NewFlagSet("project", flag.ContinueOnError)
	version := fs.String("version", "", "image tag (the repository's VERSION file)")
	out := fs.String("out", "bin/images", "directory for the tarballs")
	registry := fs.String("registry", "ghcr.io/redpacketset", "repository prefix the manifests and chart name")
	only := fs.String("only", "", "comma-separated subset of "+strings.Join(Binaries, ","))
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *version == "" {
		return errors.New("-version is required")
	}
	names := Binaries
	if *only != "" {
		names = strings.Split(*only, ",")
	}
	if err := os.MkdirAll(*out, 0o755); err != nil {
		return err
	}
	work, err := os.MkdirTemp("", "rp-images-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	for _, n := range names {
		bin := filepath.Join(work, n)
		// Static (no cgo: the image has no libc), no local paths and no build ID in the
		// binary, so the same source gives the same image.
		cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w -buildid=", "-o", bin, "./cmd/"+n)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux")
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("build cmd/%s: %w", n, err)
		}
		img, err := images.Project(images.Binary{Name: n, Path: bin, Version: *version})
		if err != nil {
			return err
		}
		tag := fmt.Sprintf("%s/%s:%s", *registry, n, *version)
		path := filepath.Join(*out, n+".tar")
		if err := images.Write(path, img, tag); err != nil {
			return err
		}
		d, _ := img.Digest()
		log.Info("image written", "file", path, "tag", tag, "digest", d.String())
	}
	return nil
}

type list []string

func (l *list) String() string     { return strings.Join(*l, ",") }
func (l *list) Set(v string) error { *l = append(*l, v); return nil }

func rootfs(args []string, log *slog.Logger) error {
	fs := flag.NewFlagSet("rootfs", flag.ContinueOnError)
	src := fs.String("rootfs", "", "tar of the root filesystem")
	out := fs.String("out", "", "image tarball to write")
	user := fs.String("user", "", "uid:gid the image runs as")
	entrypoint := fs.String("entrypoint", "", "JSON array")
	command := fs.String("cmd", "", "JSON array")
	workdir := fs.String("workdir", "/", "working directory")
	var tags, env, ports, volumes, files list
	fs.Var(&tags, "tag", "image reference, repeatable")
	fs.Var(&env, "env", "K=V, repeatable")
	fs.Var(&ports, "expose", "port/proto, repeatable")
	fs.Var(&volumes, "volume", "path, repeatable")
	fs.Var(&files, "file", "src=/dst: a file in a layer above the rootfs, repeatable")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if (*src == "" && len(files) == 0) || *out == "" || len(tags) == 0 {
		return errors.New("-out, -tag and -rootfs or -file are required")
	}
	var extra []images.File
	for _, f := range files {
		from, to, ok := strings.Cut(f, "=")
		if !ok || from == "" || !strings.HasPrefix(to, "/") {
			return fmt.Errorf("-file %q: want src=/absolute/path", f)
		}
		extra = append(extra, images.File{Src: from, Dst: to})
	}
	cfg := v1.Config{User: *user, WorkingDir: *workdir, Env: env}
	for _, a := range []struct {
		flag string
		raw  string
		dst  *[]string
	}{{"entrypoint", *entrypoint, &cfg.Entrypoint}, {"cmd", *command, &cfg.Cmd}} {
		if a.raw == "" {
			continue
		}
		if err := json.Unmarshal([]byte(a.raw), a.dst); err != nil {
			return fmt.Errorf("-%s: %w", a.flag, err)
		}
	}
	if len(ports) > 0 {
		cfg.ExposedPorts = map[string]struct{}{}
		for _, p := range ports {
			cfg.ExposedPorts[p] = struct{}{}
		}
	}
	if len(volumes) > 0 {
		cfg.Volumes = map[string]struct{}{}
		for _, v := range volumes {
			cfg.Volumes[v] = struct{}{}
		}
	}
	img, err := images.Rootfs(*src, cfg, extra...)
	if err != nil {
		return err
	}
	if err := images.Write(*out, img, tags...); err != nil {
		return err
	}
	d, _ := img.Digest()
	log.Info("image written", "file", *out, "tags", tags.String(), "digest", d.String())
	return nil
}
