package redirect

import (
	"fmt"
	"os"
	"strings"
	"testing"
)

// TestConfigReferenceUpToDate keeps the field tables in README.md and
// docs/config.md equal to Fields(): every flag, environment variable and default
// a user reads there is the one the code accepts. UPDATE_GOLDEN=1 rewrites them.
func TestConfigReferenceUpToDate(t *testing.T) {
	t.Parallel()
	table := fieldTable()
	for _, path := range []string{"../README.md", "../docs/config.md"} {
		checkGeneratedSection(t, path, "fields", table)
	}
}

func fieldTable() string {
	var b strings.Builder
	b.WriteString("| field | flag | environment | default | meaning |\n|---|---|---|---|---|\n")
	d := Default()
	for _, f := range Fields() {
		def := f.Get(&d)
		if def == "" {
			def = "(none)"
		}
		fmt.Fprintf(&b, "| `%s` | `--%s` | `%s` | `%s` | %s |\n", f.Path, f.Name, f.EnvName(), def, f.Usage)
	}
	return b.String()
}

// checkGeneratedSection compares the text between <!-- name:begin --> and
// <!-- name:end --> in path with want, or rewrites it under UPDATE_GOLDEN=1.
func checkGeneratedSection(t *testing.T, path, name, section string) {
	t.Helper()
	begin, end := "<!-- "+name+":begin -->\n", "<!-- "+name+":end -->\n"
	doc, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s := string(doc)
	i, j := strings.Index(s, begin), strings.Index(s, end)
	if i < 0 || j < i {
		t.Fatalf("%s lacks the %q … %q markers", path, begin, end)
	}
	want := s[:i+len(begin)] + section + s[j:]
	if want == s {
		return
	}
	if os.Getenv("UPDATE_GOLDEN") == "1" {
		if err := os.WriteFile(path, []byte(want), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	t.Errorf("%s is out of date with redirect.Fields(); run UPDATE_GOLDEN=1 go test ./redirect/", path)
}
