package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/podpath/podpath/services"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

// errNoServices is an input without a single service. Applied with
// pruning it would remove every service on the node, which a truncated
// file, an empty template or a wrong path should never do by accident.
var errNoServices = errors.New("no services in it: nothing applied (pass --allow-empty if an empty node is meant)")

// decodeServices reads every document of a services file: YAML documents
// separated by "---", or a stream of JSON values. Each document is a list
// of services or an object with a "services" list. The whole input is
// checked before anything is returned: unknown fields are errors (a
// misspelt field would otherwise silently take its default), a service
// may appear only once, and unless allowEmpty every document that holds
// anything, and the input as a whole, must hold a service. Documents of
// only comments are skipped.
func decodeServices(data []byte, allowEmpty bool) ([]services.Service, error) {
	docs, err := splitDocuments(data)
	if err != nil {
		return nil, err
	}
	var all []services.Service
	seen := map[string]int{} // namespace/name -> document
	for i, doc := range docs {
		n := i + 1
		if blank(doc) {
			continue
		}
		svcs, err := decodeDocument(doc)
		if err != nil {
			return nil, docError(len(docs), n, err)
		}
		if len(svcs) == 0 && !allowEmpty {
			return nil, docError(len(docs), n, errNoServices)
		}
		for _, s := range svcs {
			if s.Namespace == "" {
				s.Namespace = services.DefaultNamespace
			}
			if s.Name == "" {
				continue // validation names it
			}
			if d, dup := seen[s.Key()]; dup {
				return nil, docError(len(docs), n, fmt.Errorf("service %s is defined twice (also in document %d)", s.Key(), d))
			}
			seen[s.Key()] = n
		}
		all = append(all, svcs...)
	}
	if len(all) == 0 && !allowEmpty {
		return nil, errNoServices
	}
	return all, nil
}

// docError names the document at fault when there are several.
func docError(docs, n int, err error) error {
	if docs == 1 {
		return err
	}
	return fmt.Errorf("document %d: %w", n, err)
}

// splitDocuments cuts the input into documents: the values of a JSON
// stream when it is one, YAML documents otherwise.
func splitDocuments(data []byte) ([][]byte, error) {
	var docs [][]byte
	dec := json.NewDecoder(bytes.NewReader(data))
	for {
		var v json.RawMessage
		err := dec.Decode(&v)
		if err == io.EOF && len(docs) > 0 {
			return docs, nil
		}
		if err != nil {
			break // not JSON (or not only JSON): YAML
		}
		docs = append(docs, v)
	}
	docs = nil
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	for {
		doc, err := r.Read()
		if err == io.EOF {
			return docs, nil
		}
		if err != nil {
			return nil, err
		}
		docs = append(docs, doc)
	}
}

// blank tells whether a YAML document holds nothing but blank lines and
// comments.
func blank(doc []byte) bool {
	for line := range strings.Lines(string(doc)) {
		if line = strings.TrimSpace(line); line != "" && !strings.HasPrefix(line, "#") {
			return false
		}
	}
	return true
}

// decodeDocument reads one document: a list of services or
// {"services": [...]}.
func decodeDocument(doc []byte) ([]services.Service, error) {
	j, err := yaml.YAMLToJSONStrict(doc)
	if err != nil {
		return nil, err
	}
	j = bytes.TrimSpace(j)
	if string(j) == "null" {
		return nil, nil
	}
	dec := json.NewDecoder(bytes.NewReader(j))
	dec.DisallowUnknownFields()
	if j[0] == '[' {
		var list []services.Service
		err := dec.Decode(&list)
		return list, err
	}
	var d struct {
		Services []services.Service `json:"services"`
	}
	err = dec.Decode(&d)
	return d.Services, err
}
