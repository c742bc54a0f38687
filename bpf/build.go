package bpf

import (
	"crypto/sha256"
	"encoding/hex"
	gosync "sync"
)

// selfBuild is the identity of the programs this binary carries: the
// SHA-256 of the object bpf2go embedded, which `go generate` writes beside
// it (detour_build.go), so no process hashes 100 KB at run time.
var selfBuild = gosync.OnceValue(func() [sha256.Size]byte {
	var b [sha256.Size]byte
	if n, err := hex.Decode(b[:], []byte(objectSHA256)); err != nil || n != len(b) {
		// Only a hand-edited detour_build.go gets here; the build test
		// fails first. The object's own hash is right, if slower.
		return sha256.Sum256(_DetourBytes)
	}
	return b
})

func thisBuild() [sha256.Size]byte { return selfBuild() }

// buildName is a build as commands show it: the first 12 hex digits.
func buildName(b [sha256.Size]byte) string { return hex.EncodeToString(b[:6]) }

// BuildName is this binary's build of the programs, as `plan` and `status`
// name it.
func BuildName() string { return buildName(thisBuild()) }

// buildLinePrefix starts the line that names the build of a scope's
// programs, in `detour plan`'s text form.
const buildLinePrefix = "programs build "
