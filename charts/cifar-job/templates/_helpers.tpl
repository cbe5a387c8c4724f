{{/* The chart name, or nameOverride. */}}
{{- define "cifar-job.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Prefix of every object's name. At most 54 characters, so that the Job name
(<fullname>-<8 hex>) stays within the 63 that its pods' job-name label allows.
*/}}
{{- define "cifar-job.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 54 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 54 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 54 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Name of the Job, its ConfigMap and its run directory. A hash of the values and the chart
version: a Job's pod template is immutable, so a `helm upgrade` that changes anything must
create a new Job instead of patching the old one.
*/}}
{{- define "cifar-job.runName" -}}
{{- $hash := dict "values" .Values "chart" .Chart.Version | toJson | sha256sum | trunc 8 }}
{{- .Values.runName | default (printf "%s-%s" (include "cifar-job.fullname" .) $hash) }}
{{- end }}

{{/*
Trials of an experiment spec (the Indexed Job's completions): the product of the grid's list
lengths, seeds and folds, as `cifar-job experiment trials` counts them.
*/}}
{{- define "cifar-job.trials" -}}
{{- $trials := 1 }}
{{- range $key, $choices := get . "grid" | default dict }}
{{- $trials = mul $trials (len $choices) }}
{{- end }}
{{- mul $trials (get . "seeds" | default 1 | int) (get . "folds" | default 1 | int) }}
{{- end }}

{{/*
Where an experiment's trials, summary and lock live on the claim: named like the Job, so a
retried index resumes its trial and a changed spec (a new Job) starts a new experiment.
*/}}
{{- define "cifar-job.experimentDir" -}}
{{- printf "%s/experiments/%s" .Values.storage.mountPath (include "cifar-job.runName" .) }}
{{- end }}

{{- define "cifar-job.selectorLabels" -}}
app.kubernetes.io/name: {{ include "cifar-job.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "cifar-job.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "cifar-job.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | quote }}
app.kubernetes.io/component: training
app.kubernetes.io/part-of: cifar-job
app.kubernetes.io/managed-by: {{ .Values.managedBy | default .Release.Service }}
{{- end }}

{{- define "cifar-job.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{- define "cifar-job.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- .Values.serviceAccount.name | default (include "cifar-job.fullname" .) }}
{{- else }}
{{- .Values.serviceAccount.name | default "default" }}
{{- end }}
{{- end }}

{{- define "cifar-job.claimName" -}}
{{- if .Values.storage.create }}
{{- printf "%s-data" (include "cifar-job.fullname" .) }}
{{- else }}
{{- required "storage.existingClaim is required when storage.create is false" .Values.storage.existingClaim }}
{{- end }}
{{- end }}

{{/*
NetworkPolicyPeers as a block sequence indented the way yamllint and kubectl print them
(toYaml would leave an ipBlock's `except` list unindented).
*/}}
{{- define "cifar-job.peers" -}}
{{- range . }}
{{- if .ipBlock }}
- ipBlock:
    cidr: {{ .ipBlock.cidr | quote }}
    {{- with .ipBlock.except }}
    except:
      {{- range . }}
      - {{ . | quote }}
      {{- end }}
    {{- end }}
{{- else }}
- {{ toYaml . | nindent 2 | trim }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Fail on any URL in a ConfigMap's text that carries credentials, a query or a fragment (where
tokens hide): the ConfigMap is readable by anyone who can read the namespace's config, and is
recorded with the run. The job refuses the same URLs (job/config.py CREDENTIALS_IN_URL); basic
auth comes from dataAuth and metrics.pushgateway, Secrets mounted as files.
*/}}
{{- define "cifar-job.noCredentials" -}}
{{- if regexMatch "[A-Za-z][A-Za-z0-9+.-]*://([^/\\s]*@|[^?#\\s]*[?#])" .text }}
{{- fail (printf "%s: a URL with credentials, a query or a fragment is refused (it would be stored in the ConfigMap); use dataAuth or metrics.pushgateway with a Secret" .where) }}
{{- end }}
{{- end }}

{{/*
"true" when the pods publish signed versions only: config.publish.require_signature, or in an
experiment its spec's base (which wins over config, as the ConfigMap merges them); else empty.
*/}}
{{- define "cifar-job.requireSignature" -}}
{{- $require := dig "publish" "require_signature" false (.Values.config | default dict) }}
{{- with .Values.experiment.spec }}
{{- $require = dig "base" "publish" "require_signature" $require . }}
{{- end }}
{{- if $require }}true{{ end }}
{{- end }}
