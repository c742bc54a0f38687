// Package ebpfpins says where the eBPF backend keeps its state on a node, for
// the builds that do not link the backend (the lean detour and detour-cni):
// they hand a call to the full build while that state exists. It must not
// import other detour packages or cilium/ebpf.
package ebpfpins

import (
	"os"
	"path/filepath"
)

// DefaultDir is where the eBPF backend pins its maps and links (bpf.DefaultPinDir).
const DefaultDir = "/sys/fs/bpf/detour"

// Maps is the directory of the backend's pinned maps under dir ("" =
// DefaultDir), and what looking at it found: nil when the maps are pinned,
// an error matching fs.ErrNotExist when they are not, another error (such as
// fs.ErrPermission for a user who may not look into the bpffs) when it could
// not tell.
func Maps(dir string) (string, error) {
	if dir == "" {
		dir = DefaultDir
	}
	maps := filepath.Join(dir, "maps")
	_, err := os.Stat(maps)
	return maps, err
}
