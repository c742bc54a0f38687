// Package golden compares test output with files under testdata. Set
// UPDATE_GOLDEN=1 to rewrite the files instead (an environment variable works
// with `go test ./...`, a flag does not). Only tests import it.
package golden
