package bpf

import (
	"crypto/sha256"
	"encoding/hex"
	"testing"
)

// TestBuildIdentityIsTheObjectsHash: the build noted beside the pins is the
// SHA-256 of the embedded object; a detour_build.go left stale by a
// regeneration of the object would make an upgrade keep the old programs.
func TestBuildIdentityIsTheObjectsHash(t *testing.T) {
	sum := sha256.Sum256(_DetourBytes)
	if got, want := objectSHA256, hex.EncodeToString(sum[:]); got != want {
		t.Fatalf("detour_build.go says the object's SHA-256 is %s, it is %s: run make generate", got, want)
	}
	if thisBuild() != sum {
		t.Fatalf("this build = %x, want %x", thisBuild(), sum)
	}
}
