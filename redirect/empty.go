package redirect

import (
	"bytes"
	"errors"
	"io"
	"os"

	"sigs.k8s.io/yaml"
)

// EmptyDocument reports whether doc holds no setting at all: nothing but
// white space, comments, document markers or a bare null. A config file like
// that is almost always a template or a copy that went wrong, so the commands
// that read one refuse it instead of taking it as "the defaults" (`{}` says
// the defaults on purpose and is not empty). A document that does not parse
// is not empty: Decode reports it.
func EmptyDocument(doc []byte) bool {
	if len(bytes.TrimSpace(doc)) == 0 {
		return true
	}
	js, err := yaml.YAMLToJSON(doc)
	return err == nil && string(bytes.TrimSpace(js)) == "null"
}

// MaxDocument bounds a config document (16 MiB): even a list of 100,000
// CIDRs is a few MiB. A path to something endless (/dev/zero, a device, a
// pipe that never closes) must not read until memory runs out.
const MaxDocument = 16 << 20

// ErrDocumentTooLarge is ReadDocument's error for a document over MaxDocument;
// its text is the reason a caller names with the path.
var ErrDocumentTooLarge = errors.New("is larger than 16 MiB, more than any config document")

// ReadDocument reads a config document from r, at most MaxDocument bytes.
func ReadDocument(r io.Reader) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(r, MaxDocument+1))
	if err != nil {
		return nil, err
	}
	if len(b) > MaxDocument {
		return nil, ErrDocumentTooLarge
	}
	return b, nil
}

// ReadDocumentFile reads the config document at path, at most MaxDocument
// bytes.
func ReadDocumentFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return ReadDocument(f)
}
