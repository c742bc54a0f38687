package bpf

import (
	"crypto/sha256"
	"encoding/hex"
	gosync "sync"
)

// selfBuild is the identity of the programs this binary carries: a SHA-256
// of the object bpf2go embedded, computed once per process.
var selfBuild = gosync.OnceValue(func() [sha256.Size]byte { return sha256.Sum256(_DetourBytes) })

func thisBuild() [sha256.Size]byte { return selfBuild() }

// buildName is a build as commands show it: the first 12 hex digits.
func buildName(b [sha256.Size]byte) string { return hex.EncodeToString(b[:6]) }

// BuildName is this binary's build of the programs, as `plan` and `status`
// name it.
func BuildName() string { return buildName(thisBuild()) }

// buildLinePrefix starts the line that names the build of a scope's
// programs, in `detour plan`'s text form.
const buildLinePrefix = "programs build "
