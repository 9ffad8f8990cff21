"""kubectl's JSONPath templates. The cases and expected outputs are client-go's
(`util/jsonpath/jsonpath_test.go`: TestTypesInput, TestStructInput, TestJSONInput,
TestKubernetes), with kubectl's default of printing nothing for a missing field."""

from __future__ import annotations

import json

import pytest

from wakegate.jsonpath import JSONPathError, render

TYPES = {
    "bools": [True, False, True, False],
    "integers": [1, 2, 3, 4],
    "floats": [1.0, 2.2, 3.3, 4.0],
    "strings": ["one", "two", "three", "four"],
    "interfaces": [True, "one", 1, 1.1],
    "maps": [
        {"name": "one", "value": 1},
        {"name": "two", "value": 2.02},
        {"name": "three", "value": 3.03},
        {"name": "four", "value": 4.04},
    ],
}

STORE = {
    "Name": "jsonpath",
    "Book": [
        {"Category": "reference", "Author": "Nigel Rees", "Title": "Sayings of the Centurey",
         "Price": 8.95},
        {"Category": "fiction", "Author": "Evelyn Waugh", "Title": "Sword of Honour",
         "Price": 12.99},
        {"Category": "fiction", "Author": "Herman Melville", "Title": "Moby Dick",
         "Price": 8.99},
    ],
    "Bicycle": [
        {"Color": "red", "Price": 19.95, "IsNew": True},
        {"Color": "green", "Price": 20.01, "IsNew": False},
    ],
    "Labels": {"engieer": 10, "web/html": 15, "k8s-app": 20},
    "Employees": {"jason": "manager", "dan": "clerk"},
}  # fmt: skip

NODES = json.loads("""{
  "kind": "List",
  "items": [
    {"kind": "None",
     "metadata": {"name": "127.0.0.1", "labels": {"kubernetes.io/hostname": "127.0.0.1"}},
     "status": {"capacity": {"cpu": "4"}, "ready": true,
                "addresses": [{"type": "LegacyHostIP", "address": "127.0.0.1"}]}},
    {"kind": "None",
     "metadata": {"name": "127.0.0.2", "labels": {"kubernetes.io/hostname": "127.0.0.2"}},
     "status": {"capacity": {"cpu": "8"}, "ready": false,
                "addresses": [{"type": "LegacyHostIP", "address": "127.0.0.2"},
                              {"type": "another", "address": "127.0.0.3"}]}}
  ],
  "users": [{"name": "myself", "user": {}},
            {"name": "e2e", "user": {"username": "admin", "password": "secret"}}]
}""")

POINTS = [
    {"id": "i1", "x": 4, "y": -5},
    {"id": "i2", "x": -2, "y": -5, "z": 1},
    {"id": "i3", "x": 8, "y": 3},
    {"id": "i4", "x": -6, "y": -1},
    {"id": "i5", "x": 0, "y": 2, "z": 1},
    {"id": "i6", "x": 1, "y": 4},
]


@pytest.mark.parametrize(
    ("template", "data", "expected"),
    [
        ("{ .bools }", TYPES, "[true,false,true,false]"),
        ("{ .bools[-1] }", TYPES, "false"),
        ("{ .bools[:4:2] }", TYPES, "true true"),
        ("{ .integers[-2] }", TYPES, "3"),
        ("{ .integers[0:2] }", TYPES, "1 2"),
        ("{ .floats }", TYPES, "[1,2.2,3.3,4]"),
        ("{ .floats[0] }", TYPES, "1"),
        ("{ .floats[:4:2] }", TYPES, "1 3.3"),
        ("{ .strings }", TYPES, '["one","two","three","four"]'),
        ("{ .strings[:4:2] }", TYPES, "one three"),
        ("{ .interfaces[0:2] }", TYPES, "true one"),
        ("{ .maps[0] }", TYPES, '{"name":"one","value":1}'),
        ("{ .maps[1::2] }", TYPES, '{"name":"two","value":2.02} {"name":"four","value":4.04}'),
        ("hello jsonpath", None, "hello jsonpath"),
        ("{[?(@<5)]}", [2, 6, 3, 7], "2 3"),
        ('{"{"}', None, "{"),
        ("{[1,3,4]}", [0, 1, 2, 3, 4], "1 3 4"),
        ("{[0:2]}", ["Monday", "Tudesday"], "Monday Tudesday"),
        ("hello {.Name}", STORE, "hello jsonpath"),
        ("{$.Labels.web/html}", STORE, "15"),
        ("{$.Employees.jason}", STORE, "manager"),
        ("{.Labels.k8s-app}", STORE, "20"),
        ("{.Bicycle[*].Color}", STORE, "red green"),
        ("{.Book[*].Author}", STORE, "Nigel Rees Evelyn Waugh Herman Melville"),
        ('{range .Bicycle[*]}{ "{" }{ @.* }{ "} " }{end}', STORE,
         "{red 19.95 true} {green 20.01 false} "),
        ("{..Price}", STORE, "8.95 12.99 8.99 19.95 20.01"),
        ("{...Price}", STORE, "8.95 12.99 8.99 19.95 20.01"),
        ("{.Book[-1:]}", STORE,
         '{"Author":"Herman Melville","Category":"fiction","Price":8.99,"Title":"Moby Dick"}'),
        ("{..Book[2]}", STORE,
         '{"Author":"Herman Melville","Category":"fiction","Price":8.99,"Title":"Moby Dick"}'),
        ("{.Bicycle[?(@.IsNew==true)].Color}", STORE, "red"),
        ("{.Bicycle[?(@.Color=~'^g.*en.*')].Color}", STORE, "green"),
        ("{.Bicycle[?(@.Color=~'.*e.*')].Color}", STORE, "red green"),
        ("{.hello}", STORE, ""),
        ("before-{.hello}after", STORE, "before-after"),
        ("{[?(@.z)].id}", POINTS, "i2 i5"),
        ("{[0]['id']}", POINTS, "i1"),
        ("{range .items[*]}{.metadata.name}, {end}{.kind}", NODES, "127.0.0.1, 127.0.0.2, List"),
        ('{range .items[*]}{.metadata.name}{"\\t"}{end}', NODES, "127.0.0.1\t127.0.0.2\t"),
        ("{.items[*].status.addresses[*].address}", NODES, "127.0.0.1 127.0.0.2 127.0.0.3"),
        ("{range .items[*]}{range .status.addresses[*]}{.address}, {end}{end}", NODES,
         "127.0.0.1, 127.0.0.2, 127.0.0.3, "),
        ("{.items[*]['metadata.name', 'status.capacity']}", NODES,
         '127.0.0.1 127.0.0.2 {"cpu":"4"} {"cpu":"8"}'),
        ("{range .items[*]}[{.metadata.name}, {.status.capacity}] {end}", NODES,
         '[127.0.0.1, {"cpu":"4"}] [127.0.0.2, {"cpu":"8"}] '),
        ('{.users[?(@.name=="e2e")].user.password}', NODES, "secret"),
        ("{.items[0].metadata.labels.kubernetes\\.io/hostname}", NODES, "127.0.0.1"),
        ('{.items[?(@.metadata.labels.kubernetes\\.io/hostname=="127.0.0.1")].kind}', NODES,
         "None"),
        ("{.items[?(@..ready==true)].metadata.name}", NODES, "127.0.0.1"),
        ("{range .items[*]}{.metadata.name}{end}", {"items": []}, ""),
        ("{[?(@.x>=1)].id}", POINTS, "i1 i3 i6"),
        ("{[?(@.y!=-5)].id}", POINTS, "i3 i4 i5 i6"),
    ],
)  # fmt: skip
def test_client_go_cases(template: str, data: object, expected: str) -> None:
    assert render(template, data) == expected


def test_the_walkthroughs_templates() -> None:
    route = {"status": {"url": "http://helloworld-go.default.example.com",
                        "domain": "helloworld-go.default.example.com"}}  # fmt: skip
    assert render("{.status.domain}", route) == "helloworld-go.default.example.com"
    service = {"status": {"loadBalancer": {"ingress": [{"ip": "127.0.0.1"}]}}}
    assert render("{.status.loadBalancer.ingress[*].ip}", service) == "127.0.0.1"
    ready = {"status": {"conditions": [{"type": "Ready", "status": "True"}]}}
    assert render('{.status.conditions[?(@.type=="Ready")].status}', ready) == "True"


@pytest.mark.parametrize(
    ("template", "data", "error"),
    [
        ("{hello}", STORE, "unrecognized identifier hello"),
        ("{.Labels[0]}", STORE, "map is not array or slice"),
        ("{.Book[?(@.Price<>10)]}", STORE, "unrecognized filter operator <>"),
        ("{range .Labels.*}{@}{end}{end}", STORE, "not in range, nothing to end"),
        ("{.Book[5]}", STORE, "array index out of bounds: index 5, length 3"),
        ("{.Book[0", STORE, "unclosed"),
        ("{.Bicycle[?(@.IsNew=~'.*ue')]}", STORE, "regexp search only supports strings"),
    ],
)
def test_client_go_errors(template: str, data: object, error: str) -> None:
    with pytest.raises(JSONPathError, match=error.replace("[", "\\[")):
        render(template, data)
