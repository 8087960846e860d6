package ctrtest

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

// Images WriteImages packs; there is no registry to pull from. The pause
// image is the sandbox image of every containerd Start runs.
const (
	PauseImage   = "localhost/podpath-rt/pause:1"
	BusyboxImage = "localhost/podpath-rt/busybox:1"
)

// fileEntry is one file of an image layer.
type fileEntry struct {
	name string
	mode int64
	body []byte // regular file content
	link string // symlink target; body is ignored when set
	dir  bool
}

// layer packs entries as an uncompressed tar, the form docker save uses.
func layer(entries []fileEntry) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	mtime := time.Unix(0, 0)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Mode: e.mode, ModTime: mtime, Format: tar.FormatPAX}
		switch {
		case e.dir:
			h.Typeflag = tar.TypeDir
			h.Name += "/"
		case e.link != "":
			h.Typeflag, h.Linkname = tar.TypeSymlink, e.link
		default:
			h.Typeflag, h.Size = tar.TypeReg, int64(len(e.body))
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if h.Typeflag == tar.TypeReg {
			if _, err := tw.Write(e.body); err != nil {
				return nil, err
			}
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// imageConfig is the part of an OCI/Docker image configuration a runtime
// needs to start the image.
type imageConfig struct {
	Entrypoint []string
	Cmd        []string
	Env        []string
}

// dockerArchive builds a one-layer image as `docker save` writes it:
// manifest.json, the config blob and the layer tar, which
// `ctr images import` understands.
func dockerArchive(ref string, cfg imageConfig, layerTar []byte) ([]byte, error) {
	layerSum := sha256.Sum256(layerTar)
	layerHex := hex.EncodeToString(layerSum[:])
	config, err := json.Marshal(map[string]any{
		"architecture": runtime.GOARCH,
		"os":           "linux",
		"created":      time.Unix(0, 0).UTC(),
		"config": map[string]any{
			"Entrypoint": cfg.Entrypoint,
			"Cmd":        cfg.Cmd,
			"Env":        cfg.Env,
		},
		"rootfs": map[string]any{"type": "layers", "diff_ids": []string{"sha256:" + layerHex}},
	})
	if err != nil {
		return nil, err
	}
	configSum := sha256.Sum256(config)
	configName := hex.EncodeToString(configSum[:]) + ".json"
	layerName := layerHex + "/layer.tar"
	manifest, err := json.Marshal([]map[string]any{{
		"Config":   configName,
		"RepoTags": []string{ref},
		"Layers":   []string{layerName},
	}})
	if err != nil {
		return nil, err
	}

	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range []struct {
		name string
		body []byte
	}{{configName, config}, {layerName, layerTar}, {"manifest.json", manifest}} {
		if err := tw.WriteHeader(&tar.Header{Name: f.name, Mode: 0o644, Size: int64(len(f.body)), ModTime: time.Unix(0, 0)}); err != nil {
			return nil, err
		}
		if _, err := tw.Write(f.body); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// rootDirs are created in every image so runc has mount points ready.
var rootDirs = []fileEntry{
	{name: "dev", mode: 0o755, dir: true},
	{name: "proc", mode: 0o755, dir: true},
	{name: "sys", mode: 0o755, dir: true},
	{name: "etc", mode: 0o755, dir: true},
	{name: "tmp", mode: 0o1777, dir: true},
	{name: "root", mode: 0o700, dir: true},
	{name: "var", mode: 0o755, dir: true},
}

// pauseArchive is the sandbox image: the static pause program alone.
func pauseArchive(pauseBin string) ([]byte, error) {
	body, err := os.ReadFile(pauseBin)
	if err != nil {
		return nil, err
	}
	entries := append(append([]fileEntry{}, rootDirs...), fileEntry{name: "pause", mode: 0o755, body: body})
	l, err := layer(entries)
	if err != nil {
		return nil, err
	}
	return dockerArchive(PauseImage, imageConfig{Entrypoint: []string{"/pause"}}, l)
}

// busyboxArchive is a shell image: the static busybox and a symlink per
// applet it reports, as the busybox image on Docker Hub has.
func busyboxArchive(busybox string) ([]byte, error) {
	body, err := os.ReadFile(busybox)
	if err != nil {
		return nil, err
	}
	list, err := exec.Command(busybox, "--list").Output()
	if err != nil {
		return nil, fmt.Errorf("%s --list: %w", busybox, err)
	}
	entries := append(append([]fileEntry{}, rootDirs...),
		fileEntry{name: "bin", mode: 0o755, dir: true},
		fileEntry{name: "bin/busybox", mode: 0o755, body: body},
		fileEntry{name: "etc/passwd", mode: 0o644, body: []byte("root:x:0:0:root:/root:/bin/sh\n")},
		fileEntry{name: "etc/group", mode: 0o644, body: []byte("root:x:0:\n")},
	)
	for _, applet := range strings.Fields(string(list)) {
		if applet != "busybox" && !strings.Contains(applet, "/") {
			entries = append(entries, fileEntry{name: "bin/" + applet, mode: 0o777, link: "busybox"})
		}
	}
	l, err := layer(entries)
	if err != nil {
		return nil, err
	}
	return dockerArchive(BusyboxImage, imageConfig{
		Cmd: []string{"sh"},
		Env: []string{"PATH=/bin"},
	}, l)
}

// WriteImages writes the pause image (pauseBin, see BuildPause) and the
// busybox image (a static busybox, see RequireStaticBusybox) into dir as
// docker-save archives and returns their paths, for ImportImages.
func WriteImages(t testing.TB, dir, pauseBin, busybox string) []string {
	t.Helper()
	var paths []string
	for name, build := range map[string]func() ([]byte, error){
		"pause.tar":   func() ([]byte, error) { return pauseArchive(pauseBin) },
		"busybox.tar": func() ([]byte, error) { return busyboxArchive(busybox) },
	} {
		b, err := build()
		if err != nil {
			t.Fatalf("build %s: %v", name, err)
		}
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		paths = append(paths, p)
	}
	return paths
}
