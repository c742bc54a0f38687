package main

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"unicode"
)

var (
	linkRE    = regexp.MustCompile(`\]\(([^)\s]+)\)`)
	makeRE    = regexp.MustCompile("`make ([a-z][a-z0-9-]*)")
	makeRunRE = regexp.MustCompile(`(?:^|[\s;&|(])make ([a-z][a-z0-9-]*)`)
	targetRE  = regexp.MustCompile(`^([a-z][a-z0-9-]*):`)
	codeRE    = regexp.MustCompile("`([^`\\s]+)`")
	headingRE = regexp.MustCompile(`^#{1,6}\s+(.*?)\s*#*\s*$`)
	// testRE is a test named in a doc (`TestContract*` names a family).
	testRE     = regexp.MustCompile(`\b((?:Test|Benchmark|Fuzz)[A-Z][A-Za-z0-9_]*)(\*?)`)
	testFuncRE = regexp.MustCompile(`(?m)^func ((?:Test|Benchmark|Fuzz)[A-Za-z0-9_]*)\(`)
	// subtestRE is a backquoted subtest path, `TestLifecycle/L5/…/sticky`.
	subtestRE = regexp.MustCompile("`(Test[A-Za-z0-9_]+/[^`]+)`")
	stringRE  = regexp.MustCompile(`"([^"\\\n]{1,80})"`)
)

// topDirs are the repository's top-level folders: a backquoted word starting
// with one of them is taken for a path.
var topDirs = []string{"cmd/", "redirect/", "bpf/", "cni/", "controlplane/", "inject/", "internal/", "tests/", "hack/", "deploy/", "examples/", "docs/"}

func main() {
	problems, err := run()
	if err != nil {
		fmt.Fprintln(os.Stderr, "docscheck:", err)
		os.Exit(1)
	}
	for _, p := range problems {
		fmt.Println(p)
	}
	if len(problems) > 0 {
		os.Exit(1)
	}
}

// checker holds what the docs are checked against.
type checker struct {
	targets map[string]bool            // the Makefile's targets
	tracked []string                   // the files below deploy/
	tests   map[string]bool            // Test, Benchmark and Fuzz functions of the module
	strs    map[string]bool            // the string literals of the module's Go files (subtest names)
	anchors map[string]map[string]bool // per doc, the anchors of its headings (filled on use)
}

// run checks README.md and docs/*.md from the repository root and returns one
// line per problem.
func run() ([]string, error) {
	files, err := filepath.Glob("docs/*.md")
	if err != nil {
		return nil, fmt.Errorf("list docs: %w", err)
	}
	files = append([]string{"README.md"}, files...)
	c := checker{anchors: map[string]map[string]bool{}}
	if c.targets, err = makeTargets("Makefile"); err != nil {
		return nil, err
	}
	if c.tracked, err = walk("deploy"); err != nil {
		return nil, err
	}
	if c.tests, c.strs, err = goNames("."); err != nil {
		return nil, err
	}
	var problems []string
	for _, f := range files {
		p, err := c.check(f)
		if err != nil {
			return nil, err
		}
		problems = append(problems, p...)
	}
	return problems, nil
}

func makeTargets(path string) (map[string]bool, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read makefile: %w", err)
	}
	t := map[string]bool{}
	for _, line := range strings.Split(string(b), "\n") {
		if m := targetRE.FindStringSubmatch(line); m != nil && !strings.Contains(line, ":=") {
			t[m[1]] = true
		}
	}
	return t, nil
}

func (c checker) check(file string) ([]string, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("read doc: %w", err)
	}
	var problems []string
	report := func(line int, format string, a ...any) {
		problems = append(problems, fmt.Sprintf("%s:%d: %s", file, line, fmt.Sprintf(format, a...)))
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	inCode := false
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if strings.HasPrefix(strings.TrimSpace(line), "```") {
			inCode = !inCode
			continue
		}
		var names []string
		if inCode {
			for _, m := range makeRunRE.FindAllStringSubmatch(line, -1) {
				names = append(names, m[1])
			}
		} else {
			for _, m := range makeRE.FindAllStringSubmatch(line, -1) {
				names = append(names, m[1])
			}
		}
		for _, name := range names {
			if !c.targets[name] {
				report(n, "make %s: no such target in the Makefile", name)
			}
		}
		for _, m := range testRE.FindAllStringSubmatch(line, -1) {
			if !c.testExists(m[1], m[2] == "*") {
				report(n, "%s: no such test, benchmark or fuzz function in the module", m[0])
			}
		}
		if inCode {
			continue
		}
		for _, m := range subtestRE.FindAllStringSubmatch(line, -1) {
			if seg := c.missingSegment(m[1]); seg != "" {
				report(n, "%s: no subtest is named %q (no such string in the module's Go files)", m[1], seg)
			}
		}
		for _, m := range linkRE.FindAllStringSubmatch(line, -1) {
			if msg := checkLink(file, m[1], c.anchors); msg != "" {
				report(n, "%s", msg)
			}
		}
		for _, m := range codeRE.FindAllStringSubmatch(line, -1) {
			if msg := checkPath(m[1], c.tracked); msg != "" {
				report(n, "%s", msg)
			}
		}
	}
	return problems, sc.Err()
}

func checkLink(from, target string, anchors map[string]map[string]bool) string {
	if strings.Contains(target, "://") || strings.HasPrefix(target, "mailto:") {
		return ""
	}
	path, anchor, _ := strings.Cut(target, "#")
	file := from
	if path != "" {
		file = filepath.Clean(filepath.Join(filepath.Dir(from), path))
		if _, err := os.Stat(file); err != nil {
			return fmt.Sprintf("link %s: %s does not exist", target, file)
		}
	}
	if anchor == "" {
		return ""
	}
	if !strings.HasSuffix(file, ".md") {
		return ""
	}
	a, ok := anchors[file]
	if !ok {
		var err error
		if a, err = headingAnchors(file); err != nil {
			return fmt.Sprintf("link %s: %v", target, err)
		}
		anchors[file] = a
	}
	if !a[anchor] {
		return fmt.Sprintf("link %s: %s has no heading with anchor #%s", target, file, anchor)
	}
	return ""
}

// headingAnchors returns the anchors GitHub derives from a file's headings:
// lower case, punctuation other than '-' and '_' dropped, spaces to '-', and
// "-1", "-2", … for repeats.
func headingAnchors(file string) (map[string]bool, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("read doc: %w", err)
	}
	a := map[string]bool{}
	seen := map[string]int{}
	inCode := false
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(strings.TrimSpace(line), "```") {
			inCode = !inCode
			continue
		}
		if inCode {
			continue
		}
		m := headingRE.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		s := slug(m[1])
		if k := seen[s]; k > 0 {
			a[fmt.Sprintf("%s-%d", s, k)] = true
		} else {
			a[s] = true
		}
		seen[s]++
	}
	return a, nil
}

func slug(heading string) string {
	var sb strings.Builder
	for _, r := range strings.ToLower(heading) {
		switch {
		case r == ' ':
			sb.WriteRune('-')
		case r == '-' || r == '_' || unicode.IsLetter(r) || unicode.IsDigit(r):
			sb.WriteRune(r)
		}
	}
	return sb.String()
}

// notOurs are backquoted words that look like repository paths but name
// something else: another module's packages, or a file made by a build step.
var notOurs = map[string]bool{
	"internal/testutils/testmain": true, // cilium/ebpf's
	"internal/zstd":               true, // the standard library's
	"internal/sys":                true, // cilium/ebpf's
	"bpf/vmlinux.h":               true, // written by make generate, not committed
}

// checkPath reports a backquoted word that starts like a repository path and
// names nothing, at the root or (for a table of one folder's files) below it.
// Words with wildcards, braces or placeholders are left alone; a Go
// identifier after a package path (`redirect/backends.All`) is dropped.
func checkPath(word string, tracked []string) string {
	word = strings.TrimSuffix(strings.TrimRight(word, ".,:;"), "/...")
	if strings.ContainsAny(word, "*{}<>$…") || strings.Contains(word, "NAME") {
		return ""
	}
	if i := strings.LastIndex(word, "."); i > 0 && i+1 < len(word) && unicode.IsUpper(rune(word[i+1])) {
		word = word[:i]
	}
	word, _, _ = strings.Cut(word, ":")
	if notOurs[word] {
		return ""
	}
	for _, d := range topDirs {
		if !strings.HasPrefix(word, d) {
			continue
		}
		if _, err := os.Stat(word); err == nil {
			return ""
		}
		for _, t := range tracked {
			if strings.HasSuffix(t, "/"+word) || strings.Contains(t, "/"+word+"/") {
				return ""
			}
		}
		return fmt.Sprintf("path %s does not exist", word)
	}
	return ""
}

// walk lists the files and folders below dir.
func walk(dir string) ([]string, error) {
	var out []string
	err := filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		out = append(out, path)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", dir, err)
	}
	return out, nil
}

// goNames returns the Test, Benchmark and Fuzz functions of every _test.go
// file below root, and the string literals of every Go file (subtests are
// named by them, and by the lab's family and backend names).
func goNames(root string) (tests, strs map[string]bool, err error) {
	tests, strs = map[string]bool{}, map[string]bool{}
	err = filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == ".git" || d.Name() == "testdata") {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if strings.HasSuffix(path, "_test.go") {
			for _, m := range testFuncRE.FindAllSubmatch(b, -1) {
				tests[string(m[1])] = true
			}
		}
		for _, m := range stringRE.FindAllSubmatch(b, -1) {
			strs[string(m[1])] = true
		}
		return nil
	})
	if err != nil {
		return nil, nil, fmt.Errorf("list tests: %w", err)
	}
	return tests, strs, nil
}

// missingSegment returns the first literal part of a subtest path (after the
// test's own name) that no Go string names, or "". Wildcards (*, …) are
// skipped and {a,b} alternatives are each checked.
func (c checker) missingSegment(path string) string {
	segs := strings.Split(path, "/")[1:]
	for _, seg := range segs {
		alts := []string{seg}
		if strings.HasPrefix(seg, "{") && strings.HasSuffix(seg, "}") {
			alts = strings.Split(strings.Trim(seg, "{}"), ",")
		}
		for _, a := range alts {
			if a == "" || strings.ContainsAny(a, "*…<>[]") {
				continue
			}
			if !c.strs[a] {
				return a
			}
		}
	}
	return ""
}

// testExists reports whether the test name exists, or with prefix any test
// whose name starts with it.
func (c checker) testExists(name string, prefix bool) bool {
	if c.tests[name] {
		return true
	}
	if prefix {
		for t := range c.tests {
			if strings.HasPrefix(t, name) {
				return true
			}
		}
	}
	return false
}
