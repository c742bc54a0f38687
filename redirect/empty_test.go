package redirect

import (
	"errors"
	"strings"
	"testing"
)

func TestEmptyDocument(t *testing.T) {
	for doc, want := range map[string]bool{
		"":                      true,
		" \n\t\n":               true,
		"# only a comment\n":    true,
		"---\n# x\n---\n":       true,
		"null\n":                true,
		"~\n":                   true,
		"{}":                    false, // the defaults, said on purpose
		"proxy:\n  uid: 1337\n": false,
		"proxy: [\n":            false, // broken: Decode names it
		"# c\nmode: tproxy\n":   false,
		`{"proxy": {"uid": 1}}`: false,
	} {
		if got := EmptyDocument([]byte(doc)); got != want {
			t.Errorf("EmptyDocument(%q) = %v, want %v", doc, got, want)
		}
	}
}

func TestReadDocument(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		size int
		err  error
	}{
		{"empty", 0, nil},
		{"at the bound", MaxDocument, nil},
		{"over the bound", MaxDocument + 1, ErrDocumentTooLarge},
	} {
		b, err := ReadDocument(strings.NewReader(strings.Repeat(" ", tc.size)))
		if !errors.Is(err, tc.err) || (err == nil && len(b) != tc.size) {
			t.Errorf("%s: ReadDocument of %d bytes = %d bytes, %v; want %v", tc.name, tc.size, len(b), err, tc.err)
		}
	}
}
