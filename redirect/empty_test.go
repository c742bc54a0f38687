package redirect

import "testing"

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
