// Command image builds podpath's container image without Docker: static
// Go binaries (podpath, podpath-cni, the reference loopback CNI plugin)
// in one layer, written as an OCI image layout in a tar archive, which
// `ctr images import` loads and registries accept (skopeo, crane, oras).
//
//	go run ./deploy/image -o bin/podpath-image.tar -tag dev
//
// The image is reproducible: every file has time zero and a fixed owner,
// so the same sources give the same digests.
package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"time"
)

// Repository is the image's name; the tag is the build's version.
const Repository = "docker.io/podpath/podpath"

// loopbackPkg is the reference loopback plugin, at the plugins version in
// go.mod.
const loopbackPkg = "github.com/containernetworking/plugins/plugins/main/loopback"

func main() {
	out := flag.String("o", "bin/podpath-image.tar", "where to write the OCI archive")
	tag := flag.String("tag", "dev", "the image tag, also the binaries' version")
	flag.Parse()
	if err := build(*out, *tag); err != nil {
		fmt.Fprintln(os.Stderr, "image:", err)
		os.Exit(1)
	}
}

// file is one entry of the image's only layer.
type file struct {
	name string
	mode int64
	body []byte
	dir  bool
}

func build(out, tag string) error {
	tmp, err := os.MkdirTemp("", "podpath-image-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	bins := []struct{ pkg, path string }{
		{"./cmd/podpath", "usr/local/bin/podpath"},
		{"./cmd/podpath-cni", "opt/podpath/cni/podpath-cni"},
		{loopbackPkg, "opt/podpath/cni/loopback"},
	}
	files := []file{
		{name: "etc", mode: 0o755, dir: true},
		{name: "opt", mode: 0o755, dir: true},
		{name: "opt/podpath", mode: 0o755, dir: true},
		{name: "opt/podpath/cni", mode: 0o755, dir: true},
		{name: "tmp", mode: 0o1777, dir: true},
		{name: "usr", mode: 0o755, dir: true},
		{name: "usr/local", mode: 0o755, dir: true},
		{name: "usr/local/bin", mode: 0o755, dir: true},
		{name: "etc/passwd", mode: 0o644, body: []byte("root:x:0:0:root:/:/usr/local/bin/podpath\n")},
	}
	for _, b := range bins {
		dst := filepath.Join(tmp, filepath.Base(b.path))
		cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w -X main.version="+tag, "-o", dst, b.pkg)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=-mod=mod")
		cmd.Stderr = os.Stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("go build %s: %w", b.pkg, err)
		}
		body, err := os.ReadFile(dst)
		if err != nil {
			return err
		}
		files = append(files, file{name: b.path, mode: 0o755, body: body})
	}

	layerTar, err := tarOf(files)
	if err != nil {
		return err
	}
	var gz bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&gz, gzip.BestCompression)
	zw.Write(layerTar)
	if err := zw.Close(); err != nil {
		return err
	}
	diffID := digest(layerTar)
	layer := blob{"application/vnd.oci.image.layer.v1.tar+gzip", gz.Bytes()}

	config := mustJSON(map[string]any{
		"architecture": runtime.GOARCH,
		"os":           "linux",
		"config": map[string]any{
			"Entrypoint": []string{"/usr/local/bin/podpath"},
			"Cmd":        []string{"agent"},
			"Env":        []string{"PATH=/usr/local/bin:/usr/bin:/bin"},
			"Labels": map[string]string{
				"org.opencontainers.image.title":   "podpath",
				"org.opencontainers.image.version": tag,
			},
		},
		"rootfs":  map[string]any{"type": "layers", "diff_ids": []string{diffID}},
		"history": []map[string]any{{"created_by": "podpath deploy/image", "created": time.Unix(0, 0).UTC()}},
	})
	cfg := blob{"application/vnd.oci.image.config.v1+json", config}
	manifest := blob{"application/vnd.oci.image.manifest.v1+json", mustJSON(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.manifest.v1+json",
		"config":        cfg.descriptor(),
		"layers":        []any{layer.descriptor()},
	})}
	md := manifest.descriptor()
	md["platform"] = map[string]string{"architecture": runtime.GOARCH, "os": "linux"}
	md["annotations"] = map[string]string{
		"io.containerd.image.name":          Repository + ":" + tag,
		"org.opencontainers.image.ref.name": tag,
	}
	index := mustJSON(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.index.v1+json",
		"manifests":     []any{md},
	})

	entries := []file{
		{name: "blobs", mode: 0o755, dir: true},
		{name: "blobs/sha256", mode: 0o755, dir: true},
		{name: "oci-layout", mode: 0o644, body: []byte(`{"imageLayoutVersion":"1.0.0"}`)},
		{name: "index.json", mode: 0o644, body: index},
	}
	for _, b := range []blob{layer, cfg, manifest} {
		entries = append(entries, file{name: "blobs/sha256/" + digest(b.body)[len("sha256:"):], mode: 0o644, body: b.body})
	}
	archive, err := tarOf(entries)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(out, archive, 0o644); err != nil {
		return err
	}
	fmt.Printf("%s: %s:%s (manifest %s, %d bytes)\n", out, Repository, tag, md["digest"], len(archive))
	return nil
}

type blob struct {
	mediaType string
	body      []byte
}

func (b blob) descriptor() map[string]any {
	return map[string]any{"mediaType": b.mediaType, "digest": digest(b.body), "size": len(b.body)}
}

func digest(b []byte) string { return fmt.Sprintf("sha256:%x", sha256.Sum256(b)) }

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

// tarOf packs files in order, owned by root, at time zero.
func tarOf(files []file) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range files {
		h := &tar.Header{Name: f.name, Mode: f.mode, ModTime: time.Unix(0, 0), Format: tar.FormatPAX}
		if f.dir {
			h.Typeflag, h.Name = tar.TypeDir, f.name+"/"
		} else {
			h.Typeflag, h.Size = tar.TypeReg, int64(len(f.body))
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if !f.dir {
			if _, err := tw.Write(f.body); err != nil {
				return nil, err
			}
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
